package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	interopv1 "connect-plugin.local/tests/go/gen/interop/v1"
	"connect-plugin.local/tests/go/gen/interop/v1/interopv1connect"
)

// codes maps the Connect code names the payload's fail_code uses.
var codes = func() map[string]connect.Code {
	m := map[string]connect.Code{}
	for c := connect.Code(1); c <= 16; c++ {
		m[c.String()] = c
	}
	return m
}()

type interopService struct{}

// respond applies what a payload asks for, as the Rust and connect-node servers do.
func respond(ctx context.Context, header http.Header, p *interopv1.Payload) (*connect.Response[interopv1.Payload], error) {
	if p.SleepMs > 0 {
		select {
		case <-time.After(time.Duration(p.SleepMs) * time.Millisecond):
		case <-ctx.Done():
			return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
		}
	}
	if p.FailCode != "" {
		code, ok := codes[p.FailCode]
		if !ok {
			code = connect.CodeUnknown
		}
		err := connect.NewError(code, fmt.Errorf("failing as asked: %s", p.FailCode))
		if detail, derr := connect.NewErrorDetail(p); derr == nil {
			err.AddDetail(detail)
		}
		return nil, err
	}
	out := &interopv1.Payload{Text: p.Text, Data: p.Data, Count: p.Count, EchoedHeader: header.Get("x-echo")}
	res := connect.NewResponse(out)
	res.Header().Set("x-echo-response", "yes")
	// How the request's messages came compressed, as seen on the wire.
	encoding := header.Get("Content-Encoding")
	if encoding == "" {
		encoding = header.Get("Connect-Content-Encoding")
	}
	if encoding == "" {
		encoding = "identity"
	}
	res.Header().Set("x-request-encoding", encoding)
	res.Trailer().Set("x-trailer", "done")
	return res, nil
}

func (interopService) Unary(ctx context.Context, req *connect.Request[interopv1.Payload]) (*connect.Response[interopv1.Payload], error) {
	return respond(ctx, req.Header(), req.Msg)
}

func (interopService) Lookup(ctx context.Context, req *connect.Request[interopv1.Payload]) (*connect.Response[interopv1.Payload], error) {
	return respond(ctx, req.Header(), req.Msg)
}

func (interopService) ServerStream(ctx context.Context, req *connect.Request[interopv1.Payload], stream *connect.ServerStream[interopv1.Payload]) error {
	one, err := respond(ctx, req.Header(), req.Msg)
	if err != nil {
		return err
	}
	for k, v := range one.Header() {
		stream.ResponseHeader()[k] = v
	}
	for k, v := range one.Trailer() {
		stream.ResponseTrailer()[k] = v
	}
	for i := int32(0); i < req.Msg.Count; i++ {
		if err := stream.Send(one.Msg); err != nil {
			return err
		}
	}
	return nil
}

func (interopService) ClientStream(ctx context.Context, stream *connect.ClientStream[interopv1.Payload]) (*connect.Response[interopv1.Payload], error) {
	var texts []string
	for stream.Receive() {
		texts = append(texts, stream.Msg().Text)
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return respond(ctx, stream.RequestHeader(), &interopv1.Payload{Text: strings.Join(texts, ","), Count: int32(len(texts))})
}

func (interopService) Bidi(ctx context.Context, stream *connect.BidiStream[interopv1.Payload, interopv1.Payload]) error {
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
}

// serve serves handler on a free loopback port, HTTP/1.1 and h2c, prints "LISTENING <url>"
// and returns when stdin closes.
func serve(handler http.Handler) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	check(err, "listen")
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	server := &http.Server{Handler: handler, Protocols: protocols}
	go func() { _ = server.Serve(listener) }()
	fmt.Printf("LISTENING http://%s\n", listener.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = server.Close()
}

func interopServer() {
	mux := http.NewServeMux()
	mux.Handle(interopv1connect.NewInteropServiceHandler(interopService{}, connect.WithCompressMinBytes(0)))
	serve(mux)
}

// httpClient speaks HTTP/1.1, or h2c with prior knowledge.
func httpClient(h2c bool) *http.Client {
	protocols := new(http.Protocols)
	if h2c {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	return &http.Client{Transport: &http.Transport{Protocols: protocols}}
}

func data(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// interopClient runs the interop matrix against url: {HTTP/1.1, h2c} x {proto, json} x
// {identity, gzip} x {unary, GET, server, client, bidi}, timeouts, metadata and errors with
// details.
func interopClient(url string) {
	ctx := context.Background()
	for _, h2c := range []bool{false, true} {
		for _, json := range []bool{false, true} {
			for _, gzip := range []bool{false, true} {
				what := fmt.Sprintf("h2c=%v json=%v gzip=%v", h2c, json, gzip)
				opts := []connect.ClientOption{}
				if json {
					opts = append(opts, connect.WithProtoJSON())
				}
				if gzip {
					opts = append(opts, connect.WithSendGzip(), connect.WithCompressMinBytes(0))
				}
				client := interopv1connect.NewInteropServiceClient(httpClient(h2c), url, opts...)

				req := connect.NewRequest(&interopv1.Payload{Text: "hi", Data: data(2048)})
				req.Header().Set("x-echo", "ping")
				res, err := client.Unary(ctx, req)
				check(err, what+": unary")
				expect(res.Msg.Text == "hi" && bytes.Equal(res.Msg.Data, data(2048)), "%s: unary echo", what)
				expect(res.Msg.EchoedHeader == "ping", "%s: request header seen by the server", what)
				expect(res.Header().Get("x-echo-response") == "yes", "%s: response header", what)
				want := "identity"
				if gzip {
					want = "gzip"
				}
				expect(res.Header().Get("x-request-encoding") == want, "%s: the request went out %s-encoded, the server saw %q", what, want, res.Header().Get("x-request-encoding"))
				expect(res.Trailer().Get("x-trailer") == "done", "%s: trailer", what)

				getClient := interopv1connect.NewInteropServiceClient(httpClient(h2c), url, append(opts, connect.WithHTTPGet())...)
				looked, err := getClient.Lookup(ctx, connect.NewRequest(&interopv1.Payload{Text: "get me"}))
				check(err, what+": lookup with GET")
				expect(looked.Msg.Text == "get me", "%s: lookup with GET", what)

				stream, err := client.ServerStream(ctx, connect.NewRequest(&interopv1.Payload{Text: "s", Count: 3, Data: data(1500)}))
				check(err, what+": server stream")
				n := 0
				for stream.Receive() {
					expect(stream.Msg().Text == "s" && len(stream.Msg().Data) == 1500, "%s: server stream message", what)
					n++
				}
				check(stream.Err(), what+": server stream end")
				expect(n == 3, "%s: three streamed messages, got %d", what, n)
				expect(stream.ResponseTrailer().Get("x-trailer") == "done", "%s: stream trailer", what)

				up := client.ClientStream(ctx)
				for _, text := range []string{"a", "b", "c"} {
					check(up.Send(&interopv1.Payload{Text: text, Data: data(1200)}), what+": client stream send")
				}
				joined, err := up.CloseAndReceive()
				check(err, what+": client stream")
				expect(joined.Msg.Text == "a,b,c" && joined.Msg.Count == 3, "%s: client stream joined %q", what, joined.Msg.Text)

				if h2c {
					bidi := client.Bidi(ctx)
					for _, text := range []string{"x", "yy", "zzz"} {
						check(bidi.Send(&interopv1.Payload{Text: text, Data: data(1100)}), what+": bidi send")
						reply, err := bidi.Receive()
						check(err, what+": bidi receive")
						expect(reply.Text == text, "%s: bidi reply to %s before the next request", what, text)
					}
					check(bidi.CloseRequest(), what+": bidi close")
					_, err := bidi.Receive()
					expect(errors.Is(err, io.EOF), "%s: bidi ends after the requests end, got %v", what, err)
					check(bidi.CloseResponse(), what+": bidi close response")
				}

				slow := connect.NewRequest(&interopv1.Payload{Text: "slow", SleepMs: 2000})
				tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				_, err = client.Unary(tctx, slow)
				cancel()
				expect(connect.CodeOf(err) == connect.CodeDeadlineExceeded, "%s: deadline_exceeded, got %v", what, err)

				_, err = client.Unary(ctx, connect.NewRequest(&interopv1.Payload{Text: "boom", FailCode: "not_found"}))
				expectDetail(err, what+": unary error")
				failing, err := client.ServerStream(ctx, connect.NewRequest(&interopv1.Payload{Text: "boom", FailCode: "not_found", Count: 1}))
				if err == nil {
					for failing.Receive() {
					}
					err = failing.Err()
				}
				expectDetail(err, what+": stream error")
			}
		}
	}
	done()
}

func expectDetail(err error, what string) {
	var cerr *connect.Error
	expect(errors.As(err, &cerr), "%s: a Connect error, got %v", what, err)
	expect(cerr.Code() == connect.CodeNotFound, "%s: not_found, got %v", what, cerr.Code())
	details := cerr.Details()
	expect(len(details) == 1, "%s: one detail, got %d", what, len(details))
	value, derr := details[0].Value()
	check(derr, what+": decoding the detail")
	payload, ok := value.(*interopv1.Payload)
	expect(ok && payload.Text == "boom", "%s: the detail is the payload", what)
}
