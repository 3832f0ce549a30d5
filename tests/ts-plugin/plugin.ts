// A plugin written in TypeScript with connect-node: it joins a connect-plugin host
// ($HOST_URL) with its join token ($CONNECT_PLUGIN_JOIN_TOKEN), registers "interop" served at
// its own address, and calls a Rust provider of "kv" through the host's router.
//
// Prints "REGISTERED <runtime id>" once registered, "CALLED kv <value>" after its routed call
// (or "FAILED: <why>" and exits 1), and serves until stdin closes. Built by scripts/test.sh
// (tsc -p tests/ts-plugin) into target/ts-plugin/plugin.js.
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport } from "@connectrpc/connect-node";
import { HandshakeService } from "./gen/connectplugin/v1/handshake_pb.js";
import { ServiceRegistry } from "./gen/connectplugin/v1/registry_pb.js";
import { PluginLifecycle, HealthState } from "./gen/connectplugin/v1/lifecycle_pb.js";
import { InteropService } from "./gen/interop/v1/interop_pb.js";
import { KVService } from "./gen/kv/v1/kv_pb.js";

const MAGIC_COOKIE_KEY = "CONNECT_PLUGIN";
const MAGIC_COOKIE_VALUE = "d3f40b3c2e1a5f8b9c4d7e6a1b2c3d4e";

function fail(why: string): never {
  console.log(`FAILED: ${why}`);
  process.exit(1);
}

const hostUrl = process.env.HOST_URL ?? fail("HOST_URL is not set");
const joinToken = process.env.CONNECT_PLUGIN_JOIN_TOKEN ?? "";

// The interop service: echoes the payload, with the caller the host vouches for.
const routes = (router: import("@connectrpc/connect").ConnectRouter) => {
  router.service(InteropService, {
    unary(request, context) {
      return {
        ...request,
        echoedHeader: context.requestHeader.get("x-plugin-caller-id") ?? "",
      };
    },
  });
};
const server = http2.createServer(connectNodeAdapter({ routes }));
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

const transport = createConnectTransport({ baseUrl: hostUrl, httpVersion: "2" });
const handshake = await createClient(HandshakeService, transport).handshake({
  coreProtocolVersion: 1,
  appProtocolVersion: 1,
  magicCookieKey: MAGIC_COOKIE_KEY,
  magicCookieValue: MAGIC_COOKIE_VALUE,
  selfId: "ts-echo",
  selfVersion: "1.0.0",
  clientMetadata: joinToken ? { join_token: joinToken } : {},
}).catch((e) => fail(`handshake: ${e}`));
if (!handshake.runtimeId || !handshake.runtimeToken) fail("the host issued no identity");

// Every later call carries the runtime identity.
const identity: Interceptor = (next) => (request) => {
  request.header.set("authorization", `Bearer ${handshake.runtimeToken}`);
  request.header.set("x-plugin-runtime-id", handshake.runtimeId);
  return next(request);
};
const asPlugin = createConnectTransport({ baseUrl: hostUrl, httpVersion: "2", interceptors: [identity] });

await createClient(ServiceRegistry, asPlugin).registerService({
  serviceType: "interop",
  version: "1.0.0",
  endpointPath: "/interop.v1.InteropService/",
  metadata: { base_url: baseUrl },
}).catch((e) => fail(`register: ${e}`));
await createClient(PluginLifecycle, asPlugin).reportHealth({ state: HealthState.HEALTHY });
console.log(`REGISTERED ${handshake.runtimeId}`);

// A Rust provider of "kv", through the host's router.
const found = await createClient(ServiceRegistry, asPlugin)
  .discoverService({ serviceType: "kv", minVersion: "" })
  .catch((e) => fail(`discover kv: ${e}`));
const route = found.endpoint?.endpointUrl ?? fail("no kv endpoint");
const kv = createClient(
  KVService,
  createConnectTransport({ baseUrl: `${hostUrl}${route}`, httpVersion: "2", interceptors: [identity] }),
);
await kv.put({ key: "from-ts", value: new TextEncoder().encode("hello from typescript") })
  .catch((e) => fail(`routed put: ${e}`));
const got = await kv.get({ key: "from-ts" }).catch((e) => fail(`routed get: ${e}`));
console.log(`CALLED kv ${new TextDecoder().decode(got.value)}`);

process.stdin.on("end", () => {
  server.close();
  process.exit(0);
});
process.stdin.resume();
