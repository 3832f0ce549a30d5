// connect-node client scenario against a KV server (ours, in the interop tests).
// Usage: node client.mjs <baseUrl> <1.1|2> <proto|json>
// Prints one JSON line per step and "OK" at the end; exits 1 with the reason on any mismatch.
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService, EventType } from "./gen/kv/v1/kv_pb.js";

const [baseUrl, httpVersion, codec] = process.argv.slice(2);
if (!baseUrl || !["1.1", "2"].includes(httpVersion) || !["proto", "json"].includes(codec)) {
  console.error("usage: node client.mjs <baseUrl> <1.1|2> <proto|json>");
  process.exit(2);
}
const transport = createConnectTransport({
  baseUrl,
  httpVersion,
  useBinaryFormat: codec === "proto",
});
const kv = createClient(KVService, transport);
const text = (bytes) => new TextDecoder().decode(bytes);
const step = (name, value) => console.log(JSON.stringify({ step: name, ...value }));
function expect(cond, why) {
  if (!cond) {
    console.error(`FAILED: ${why}`);
    process.exit(1);
  }
}

const prefix = `interop-${codec}-${httpVersion}/`;
const controller = new AbortController();
let headersArrived;
const subscribed = new Promise((resolve) => (headersArrived = resolve));
const events = [];
const watching = (async () => {
  for await (const event of kv.watch({ prefix }, { signal: controller.signal, onHeader: headersArrived })) {
    events.push({ type: EventType[event.type], key: event.key, value: text(event.value) });
    if (events.length === 2) return;
  }
})();
await subscribed;

await kv.put({ key: `${prefix}a`, value: new TextEncoder().encode("alpha") });
step("put", { key: `${prefix}a` });
const got = await kv.get({ key: `${prefix}a` });
step("get", { found: got.found, value: text(got.value) });
expect(got.found && text(got.value) === "alpha", "get after put returns the value");

const deleted = await kv.delete({ key: `${prefix}a` });
step("delete", { found: deleted.found });
expect(deleted.found, "delete of an existing key reports found");
const missing = await kv.get({ key: `${prefix}a` });
step("get-missing", { found: missing.found });
expect(!missing.found, "a missing key is found=false, not an error");

try {
  await kv.get({ key: "" });
  expect(false, "an empty key must fail");
} catch (err) {
  const e = ConnectError.from(err);
  step("empty-key", { code: Code[e.code], message: e.rawMessage });
  expect(e.code === Code.InvalidArgument, `empty key gives invalid_argument, got ${Code[e.code]}`);
}

await Promise.race([
  watching,
  new Promise((_, reject) => setTimeout(() => reject(new Error("watch events did not arrive within 5 s")), 5000)),
]).catch((e) => expect(false, e.message));
controller.abort();
step("watch", { events });
expect(events.length === 2, "two watch events");
expect(events[0].type === "PUT" && events[0].key === `${prefix}a` && events[0].value === "alpha", "first event is the put");
expect(events[1].type === "DELETE" && events[1].key === `${prefix}a`, "second event is the delete");
console.log("OK");
// Exit now rather than when the watch timeout timer fires.
process.exit(0);
