// connect-node servers for interop tests: the KV service and the interop service
// (tests/proto/interop/v1/interop.proto), which our Rust client calls.
// Usage: node server.mjs <1.1|2>   (prints "LISTENING <port>" once it accepts connections)
import http from "node:http";
import http2 from "node:http2";
import { ConnectError, Code } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { KVService, EventType, GetRequestSchema } from "./gen/kv/v1/kv_pb.js";
import { InteropService, PayloadSchema } from "./gen/interop/v1/interop_pb.js";

const httpVersion = process.argv[2] ?? "2";
const store = new Map();
const watchers = new Set();

function publish(event) {
  for (const w of watchers) w.push(event);
}

function requireKey(key) {
  if (key === "") {
    throw new ConnectError("key must not be empty", Code.InvalidArgument, undefined, [
      { desc: GetRequestSchema, value: { key: "" } },
    ]);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const codeByName = Object.fromEntries(
  Object.entries(Code).filter(([, v]) => typeof v === "number").map(([k, v]) => [k.replace(/[A-Z]/g, (c, i) => (i ? "_" : "") + c.toLowerCase()), v]),
);

// The behaviours a payload asks for, as in tests/src/interop.rs.
async function respond(payload, ctx) {
  if (payload.sleepMs > 0) await sleep(payload.sleepMs);
  if (payload.failCode !== "") {
    throw new ConnectError(`failing as asked: ${payload.failCode}`, codeByName[payload.failCode] ?? Code.Unknown, undefined, [
      { desc: PayloadSchema, value: payload },
    ]);
  }
  ctx.responseHeader.set("x-echo-response", "yes");
  // How the request's messages came compressed, as seen on the wire.
  ctx.responseHeader.set(
    "x-request-encoding",
    ctx.requestHeader.get("content-encoding") ?? ctx.requestHeader.get("connect-content-encoding") ?? "identity",
  );
  ctx.responseTrailer.set("x-trailer", "done");
  return { ...payload, echoedHeader: ctx.requestHeader.get("x-echo") ?? "" };
}

const interop = {
  unary: (req, ctx) => respond(req, ctx),
  lookup: (req, ctx) => respond(req, ctx),
  async *serverStream(req, ctx) {
    const one = await respond(req, ctx);
    for (let i = 0; i < req.count; i++) yield one;
  },
  async clientStream(reqs, ctx) {
    const texts = [];
    for await (const r of reqs) texts.push(r.text);
    return respond({ $typeName: "interop.v1.Payload", text: texts.join(","), count: texts.length, data: new Uint8Array(), sleepMs: 0, failCode: "", echoedHeader: "" }, ctx);
  },
  async *bidi(reqs) {
    for await (const r of reqs) yield r;
  },
};

const kv = {
    get(req) {
      requireKey(req.key);
      const value = store.get(req.key);
      return value === undefined ? { found: false } : { found: true, value };
    },
    put(req) {
      requireKey(req.key);
      store.set(req.key, req.value);
      publish({ type: EventType.PUT, key: req.key, value: req.value });
      return {};
    },
    delete(req) {
      requireKey(req.key);
      const found = store.delete(req.key);
      if (found) publish({ type: EventType.DELETE, key: req.key });
      return { found };
    },
    async *watch(req, ctx) {
      const queue = [];
      let wake = () => {};
      const watcher = { push: (e) => { queue.push(e); wake(); } };
      watchers.add(watcher);
      const aborted = new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      try {
        // connect-node sends response headers with the first message, not before.
        ctx.responseHeader.set("x-watch", "subscribed");
        while (!ctx.signal.aborted) {
          while (queue.length > 0) {
            const event = queue.shift();
            if (event.key.startsWith(req.prefix)) yield event;
          }
          await Promise.race([new Promise((resolve) => (wake = resolve)), aborted]);
        }
      } finally {
        watchers.delete(watcher);
      }
    },
};

const routes = (router) => {
  router.service(InteropService, interop);
  router.service(KVService, kv);
};

const handler = connectNodeAdapter({ routes, compressMinBytes: 0 });
const server = httpVersion === "2" ? http2.createServer(handler) : http.createServer(handler);
server.listen(0, "127.0.0.1", () => {
  console.log(`LISTENING ${server.address().port}`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
