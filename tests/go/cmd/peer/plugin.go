package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	loggerv1 "connect-plugin.local/tests/go/gen/capability/logger/v1"
	"connect-plugin.local/tests/go/gen/capability/logger/v1/loggerv1connect"
	healthv1 "connect-plugin.local/tests/go/gen/connectplugin/health/v1"
	"connect-plugin.local/tests/go/gen/connectplugin/health/v1/healthv1connect"
	cpv1 "connect-plugin.local/tests/go/gen/connectplugin/v1"
	"connect-plugin.local/tests/go/gen/connectplugin/v1/connectpluginv1connect"
	kvv1 "connect-plugin.local/tests/go/gen/kv/v1"
	"connect-plugin.local/tests/go/gen/kv/v1/kvv1connect"
)

// The wire constants of the plugin system (connect-plugin-go's and ours alike).
const (
	magicCookieKey   = "CONNECT_PLUGIN"
	magicCookieValue = "d3f40b3c2e1a5f8b9c4d7e6a1b2c3d4e"
	// The path a handshake lists for a plugin: connect-plugin-go's generator uses the
	// service's full name without slashes.
	kvServiceName = "kv.v1.KVService"
	// Where a registration says the service is served, under its base URL.
	kvServicePath = "/kv.v1.KVService/"
)

// kvStore is kv.v1.KVService over a map, with watchers.
type kvStore struct {
	mu       sync.Mutex
	values   map[string][]byte
	watchers map[chan *kvv1.WatchEvent]string
}

func newKVStore() *kvStore {
	return &kvStore{values: map[string][]byte{}, watchers: map[chan *kvv1.WatchEvent]string{}}
}

func requireKey(key string) error {
	if key == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("key must not be empty"))
	}
	return nil
}

func (s *kvStore) publish(event *kvv1.WatchEvent) {
	for ch, prefix := range s.watchers {
		if strings.HasPrefix(event.Key, prefix) {
			select {
			case ch <- event:
			default:
			}
		}
	}
}

func (s *kvStore) Get(_ context.Context, req *connect.Request[kvv1.GetRequest]) (*connect.Response[kvv1.GetResponse], error) {
	if err := requireKey(req.Msg.Key); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	value, found := s.values[req.Msg.Key]
	return connect.NewResponse(&kvv1.GetResponse{Found: found, Value: value}), nil
}

func (s *kvStore) Put(_ context.Context, req *connect.Request[kvv1.PutRequest]) (*connect.Response[kvv1.PutResponse], error) {
	if err := requireKey(req.Msg.Key); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[req.Msg.Key] = req.Msg.Value
	s.publish(&kvv1.WatchEvent{Type: kvv1.EventType_EVENT_TYPE_PUT, Key: req.Msg.Key, Value: req.Msg.Value})
	return connect.NewResponse(&kvv1.PutResponse{}), nil
}

func (s *kvStore) Delete(_ context.Context, req *connect.Request[kvv1.DeleteRequest]) (*connect.Response[kvv1.DeleteResponse], error) {
	if err := requireKey(req.Msg.Key); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, found := s.values[req.Msg.Key]
	delete(s.values, req.Msg.Key)
	if found {
		s.publish(&kvv1.WatchEvent{Type: kvv1.EventType_EVENT_TYPE_DELETE, Key: req.Msg.Key})
	}
	return connect.NewResponse(&kvv1.DeleteResponse{Found: found}), nil
}

func (s *kvStore) Watch(ctx context.Context, req *connect.Request[kvv1.WatchRequest], stream *connect.ServerStream[kvv1.WatchEvent]) error {
	ch := make(chan *kvv1.WatchEvent, 64)
	s.mu.Lock()
	s.watchers[ch] = req.Msg.Prefix
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, ch)
		s.mu.Unlock()
	}()
	// Headers now, so the caller knows the watch is in place.
	if err := stream.Send(nil); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case event := <-ch:
			if err := stream.Send(event); err != nil {
				return err
			}
		}
	}
}

// handshakeServer answers a host's handshake for a plugin serving kv.
type handshakeServer struct{}

func (handshakeServer) Handshake(_ context.Context, req *connect.Request[cpv1.HandshakeRequest]) (*connect.Response[cpv1.HandshakeResponse], error) {
	if req.Msg.MagicCookieKey != magicCookieKey || req.Msg.MagicCookieValue != magicCookieValue {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("invalid magic cookie"))
	}
	return connect.NewResponse(&cpv1.HandshakeResponse{
		CoreProtocolVersion: 1,
		AppProtocolVersion:  1,
		Plugins:             []*cpv1.PluginInfo{{Name: "kv", Version: "1.0.0", ServicePath: kvServiceName}},
	}), nil
}

// healthServer answers "" and "kv" (the plugin's name) SERVING.
type healthServer struct{}

func (healthServer) Check(_ context.Context, req *connect.Request[healthv1.HealthCheckRequest]) (*connect.Response[healthv1.HealthCheckResponse], error) {
	switch req.Msg.Service {
	case "", "kv", kvServiceName:
		return connect.NewResponse(&healthv1.HealthCheckResponse{Status: healthv1.ServingStatus_SERVING_STATUS_SERVING}), nil
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %q", req.Msg.Service))
}

func (healthServer) Watch(context.Context, *connect.Request[healthv1.HealthCheckRequest], *connect.ServerStream[healthv1.HealthCheckResponse]) error {
	return connect.NewError(connect.CodeUnimplemented, errors.New("not here"))
}

func kvMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(kvv1connect.NewKVServiceHandler(newKVStore()))
	mux.Handle(connectpluginv1connect.NewHandshakeServiceHandler(handshakeServer{}))
	mux.Handle(healthv1connect.NewHealthServiceHandler(healthServer{}))
	return mux
}

// kvPlugin is a Go KV plugin a host launches: like connect-plugin-go's Serve, it speaks
// HTTP/1.1 only; its readiness line says so ("connect-http1"). It stops when stdin closes.
func kvPlugin() {
	listener, err := net.Listen("tcp", "127.0.0.1:"+envOr("PORT", "0"))
	check(err, "listen")
	server := &http.Server{Handler: kvMux()} // HTTP/1.1 only, as connect-plugin-go serves
	go func() { _ = server.Serve(listener) }()
	fmt.Printf("CONNECT_PLUGIN|1|tcp|%s|connect-http1\n", listener.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = server.Close()
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

// kvClient dispenses a KV plugin at url as connect-plugin-go's client does: handshake, then
// calls on the service path it lists, and its health by the plugin's name.
func kvClient(url string) {
	ctx := context.Background()
	h1 := httpClient(false)
	handshake := connectpluginv1connect.NewHandshakeServiceClient(h1, url)
	res, err := handshake.Handshake(ctx, connect.NewRequest(&cpv1.HandshakeRequest{
		CoreProtocolVersion: 1,
		AppProtocolVersion:  1,
		MagicCookieKey:      magicCookieKey,
		MagicCookieValue:    magicCookieValue,
		RequestedPlugins:    []string{"kv"},
	}))
	check(err, "handshake")
	var path string
	for _, p := range res.Msg.Plugins {
		if p.Name == "kv" {
			path = p.ServicePath
		}
	}
	expect(path == kvServiceName, "the handshake lists kv at %s, got %q", kvServiceName, path)

	health := healthv1connect.NewHealthServiceClient(h1, url)
	status, err := health.Check(ctx, connect.NewRequest(&healthv1.HealthCheckRequest{Service: "kv"}))
	check(err, "health by plugin name")
	expect(status.Msg.Status == healthv1.ServingStatus_SERVING_STATUS_SERVING, "kv is SERVING, got %v", status.Msg.Status)

	for _, h2c := range []bool{false, true} {
		kv := kvv1connect.NewKVServiceClient(httpClient(h2c), url)
		key := fmt.Sprintf("go-%v", h2c)
		watchCtx, stopWatch := context.WithCancel(ctx)
		watch, err := kv.Watch(watchCtx, connect.NewRequest(&kvv1.WatchRequest{Prefix: key}))
		check(err, "watch")
		_, err = kv.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("from go")}))
		check(err, "put")
		got, err := kv.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
		check(err, "get")
		expect(got.Msg.Found && string(got.Msg.Value) == "from go", "get after put (h2c=%v)", h2c)
		_, err = kv.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: ""}))
		expect(connect.CodeOf(err) == connect.CodeInvalidArgument, "an empty key is invalid_argument, got %v", err)
		events := 0
		for events < 1 && watch.Receive() {
			if watch.Msg().Key == key {
				expect(watch.Msg().Type == kvv1.EventType_EVENT_TYPE_PUT, "a put event")
				events++
			}
		}
		expect(events == 1, "the watch saw the put (h2c=%v): %v", h2c, watch.Err())
		stopWatch()
		_ = watch.Close()
	}
	done()
}

// selfRegistering joins $HOST_URL as a self-registering plugin the way connect-plugin-go's
// do (a self_id, no "provides" metadata, no join token), registers "kv" at its own URL,
// reports itself healthy, and serves until stdin closes.
func selfRegistering() {
	hostURL := os.Getenv("HOST_URL")
	expect(hostURL != "", "HOST_URL is set")
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	check(err, "listen")
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	server := &http.Server{Handler: kvMux(), Protocols: protocols}
	go func() { _ = server.Serve(listener) }()
	url := fmt.Sprintf("http://%s", listener.Addr())

	ctx := context.Background()
	h1 := httpClient(false)
	res, err := connectpluginv1connect.NewHandshakeServiceClient(h1, hostURL).Handshake(ctx, connect.NewRequest(&cpv1.HandshakeRequest{
		CoreProtocolVersion: 1,
		AppProtocolVersion:  1,
		MagicCookieKey:      magicCookieKey,
		MagicCookieValue:    magicCookieValue,
		SelfId:              "go-kv",
		SelfVersion:         "1.0.0",
	}))
	check(err, "handshake with the host")
	expect(res.Msg.RuntimeId != "" && res.Msg.RuntimeToken != "", "the host issued an identity")
	auth := connect.WithInterceptors(identity(res.Msg.RuntimeId, res.Msg.RuntimeToken))
	registry := connectpluginv1connect.NewServiceRegistryClient(h1, hostURL, auth)
	_, err = registry.RegisterService(ctx, connect.NewRequest(&cpv1.RegisterServiceRequest{
		ServiceType:  "kv",
		Version:      "1.0.0",
		EndpointPath: kvServicePath,
		Metadata:     map[string]string{"base_url": url},
	}))
	check(err, "register kv")
	lifecycle := connectpluginv1connect.NewPluginLifecycleClient(h1, hostURL, auth)
	_, err = lifecycle.ReportHealth(ctx, connect.NewRequest(&cpv1.ReportHealthRequest{State: cpv1.HealthState_HEALTH_STATE_HEALTHY}))
	check(err, "report health")
	fmt.Printf("REGISTERED %s\n", res.Msg.RuntimeId)
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = server.Close()
}

// identity sends a runtime identity with every call, as connect-plugin-go's clients do.
func identity(runtimeID, token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			req.Header().Set("X-Plugin-Runtime-ID", runtimeID)
			return next(ctx, req)
		}
	}
}

// goHost is a host in Go: it issues identities in the handshake, takes registrations, and
// calls back what registers a logger. It prints "REGISTERED <type> <base_url>" and
// "CALLED <type>" and stops when stdin closes.
type goHostState struct {
	mu         sync.Mutex
	identities map[string]string
}

func (h *goHostState) Handshake(_ context.Context, req *connect.Request[cpv1.HandshakeRequest]) (*connect.Response[cpv1.HandshakeResponse], error) {
	if req.Msg.MagicCookieKey != magicCookieKey || req.Msg.MagicCookieValue != magicCookieValue {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("invalid magic cookie"))
	}
	res := &cpv1.HandshakeResponse{CoreProtocolVersion: 1, AppProtocolVersion: req.Msg.AppProtocolVersion}
	if req.Msg.SelfId != "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		res.RuntimeId = fmt.Sprintf("%s-%s", req.Msg.SelfId, hex.EncodeToString(b[:4]))
		res.RuntimeToken = hex.EncodeToString(b)
		h.mu.Lock()
		h.identities[res.RuntimeId] = res.RuntimeToken
		h.mu.Unlock()
	}
	return connect.NewResponse(res), nil
}

func (h *goHostState) authenticated(header http.Header) error {
	id := header.Get("X-Plugin-Runtime-ID")
	h.mu.Lock()
	token, ok := h.identities[id]
	h.mu.Unlock()
	if !ok || header.Get("Authorization") != "Bearer "+token {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("unknown runtime identity"))
	}
	return nil
}

func (h *goHostState) RegisterService(ctx context.Context, req *connect.Request[cpv1.RegisterServiceRequest]) (*connect.Response[cpv1.RegisterServiceResponse], error) {
	if err := h.authenticated(req.Header()); err != nil {
		return nil, err
	}
	base := req.Msg.Metadata["base_url"]
	fmt.Printf("REGISTERED %s %s\n", req.Msg.ServiceType, base)
	if req.Msg.ServiceType == "logger" && base != "" {
		// Call the plugin back where it said it is, as a host routing to it would.
		go func() {
			logger := loggerv1connect.NewLoggerClient(httpClient(false), base+strings.TrimSuffix(req.Msg.EndpointPath, "/capability.logger.v1.Logger/"))
			_, err := logger.Log(context.Background(), connect.NewRequest(&loggerv1.LogRequest{Message: "hello from a Go host"}))
			if err != nil {
				fmt.Printf("CALL FAILED %s: %v\n", req.Msg.ServiceType, err)
				return
			}
			fmt.Printf("CALLED %s\n", req.Msg.ServiceType)
		}()
	}
	return connect.NewResponse(&cpv1.RegisterServiceResponse{RegistrationId: "reg-" + req.Msg.ServiceType}), nil
}

func (h *goHostState) UnregisterService(context.Context, *connect.Request[cpv1.UnregisterServiceRequest]) (*connect.Response[cpv1.UnregisterServiceResponse], error) {
	return connect.NewResponse(&cpv1.UnregisterServiceResponse{}), nil
}

func (h *goHostState) DiscoverService(context.Context, *connect.Request[cpv1.DiscoverServiceRequest]) (*connect.Response[cpv1.DiscoverServiceResponse], error) {
	return nil, connect.NewError(connect.CodeNotFound, errors.New("this host routes nothing"))
}

func (h *goHostState) WatchService(context.Context, *connect.Request[cpv1.WatchServiceRequest], *connect.ServerStream[cpv1.WatchServiceEvent]) error {
	return connect.NewError(connect.CodeUnimplemented, errors.New("not here"))
}

func (h *goHostState) ReportHealth(_ context.Context, req *connect.Request[cpv1.ReportHealthRequest]) (*connect.Response[cpv1.ReportHealthResponse], error) {
	if err := h.authenticated(req.Header()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&cpv1.ReportHealthResponse{}), nil
}

func (h *goHostState) GetHealth(context.Context, *connect.Request[cpv1.GetHealthRequest]) (*connect.Response[cpv1.GetHealthResponse], error) {
	return connect.NewResponse(&cpv1.GetHealthResponse{State: cpv1.HealthState_HEALTH_STATE_HEALTHY}), nil
}

func (h *goHostState) Shutdown(context.Context, *connect.Request[cpv1.ShutdownRequest]) (*connect.Response[cpv1.ShutdownResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("not here"))
}

func goHost() {
	state := &goHostState{identities: map[string]string{}}
	mux := http.NewServeMux()
	mux.Handle(connectpluginv1connect.NewHandshakeServiceHandler(state))
	mux.Handle(connectpluginv1connect.NewServiceRegistryHandler(state))
	mux.Handle(connectpluginv1connect.NewPluginLifecycleHandler(state))
	go func() {
		time.Sleep(10 * time.Minute)
		os.Exit(3)
	}()
	serve(mux)
}
