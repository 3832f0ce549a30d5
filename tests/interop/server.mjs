// A connect-node KV server for interop tests: our Rust client calls it.
// Usage: node server.mjs <1.1|2>   (prints "LISTENING <port>" once it accepts connections)
import http from "node:http";
import http2 from "node:http2";
import { ConnectError, Code } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { KVService, EventType, GetRequestSchema } from "./gen/kv/v1/kv_pb.js";

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

const routes = (router) =>
  router.service(KVService, {
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
        // Send headers at once so the client knows it is subscribed.
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
  });

const handler = connectNodeAdapter({ routes });
const server = httpVersion === "2" ? http2.createServer(handler) : http.createServer(handler);
server.listen(0, "127.0.0.1", () => {
  console.log(`LISTENING ${server.address().port}`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
