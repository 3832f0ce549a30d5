// connect-node client: the interop matrix against a server of the interop service (ours).
// Usage: node matrix.mjs <baseUrl>
// Covers {HTTP/1.1, h2c} x {proto, json} x {identity, gzip} x {unary, server, client, bidi},
// plus GET, timeouts, metadata and errors with details. Prints "OK <n> checks" or exits 1.
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createWritableIterable } from "@connectrpc/connect/protocol";
import { createConnectTransport, compressionGzip } from "@connectrpc/connect-node";
import { InteropService, PayloadSchema } from "./gen/interop/v1/interop_pb.js";

const baseUrl = process.argv[2];
let checks = 0;
function expect(cond, why) {
  if (!cond) {
    console.error(`FAILED: ${why}`);
    process.exit(1);
  }
  checks++;
}
const bytes = (n) => new Uint8Array(n).map((_, i) => i % 251);

for (const httpVersion of ["1.1", "2"]) {
  for (const useBinaryFormat of [true, false]) {
    for (const gzip of [false, true]) {
      const ctx = `HTTP/${httpVersion} ${useBinaryFormat ? "proto" : "json"} ${gzip ? "gzip" : "identity"}`;
      const options = { baseUrl, httpVersion, useBinaryFormat };
      if (gzip) Object.assign(options, { sendCompression: compressionGzip, compressMinBytes: 0 });
      const client = createClient(InteropService, createConnectTransport(options));

      // Unary, with metadata both ways.
      let headers, trailers;
      const echoed = await client.unary(
        { text: "hi", data: bytes(2048) },
        { headers: { "x-echo": "ping" }, onHeader: (h) => (headers = h), onTrailer: (t) => (trailers = t) },
      );
      expect(echoed.text === "hi" && echoed.data.length === 2048 && echoed.data[300] === 300 % 251, `${ctx}: unary echo`);
      expect(echoed.echoedHeader === "ping", `${ctx}: request header seen by the server`);
      expect(headers.get("x-echo-response") === "yes", `${ctx}: response header`);
      const sentAs = headers.get("x-request-encoding");
      expect(sentAs === (gzip ? "gzip" : "identity"), `${ctx}: the request went out ${gzip ? "gzip" : "identity"}-encoded, the server saw ${sentAs}`);
      expect(trailers.get("x-trailer") === "done", `${ctx}: trailer`);

      // GET for NO_SIDE_EFFECTS.
      const getClient = createClient(InteropService, createConnectTransport({ ...options, useHttpGet: true }));
      const looked = await getClient.lookup({ text: "get me" });
      expect(looked.text === "get me", `${ctx}: lookup with GET`);

      // Server streaming.
      const streamed = [];
      for await (const p of client.serverStream({ text: "s", count: 3, data: bytes(1500) })) streamed.push(p);
      expect(streamed.length === 3 && streamed.every((p) => p.text === "s" && p.data.length === 1500), `${ctx}: server stream`);

      // Client streaming.
      const sent = (async function* () {
        for (const text of ["a", "b", "c"]) yield { text, data: bytes(1200) };
      })();
      const joined = await client.clientStream(sent);
      expect(joined.text === "a,b,c" && joined.count === 3, `${ctx}: client stream`);

      // Bidi: full duplex needs HTTP/2.
      if (httpVersion === "2") {
        const requests = createWritableIterable();
        const replies = client.bidi(requests)[Symbol.asyncIterator]();
        for (const text of ["x", "yy", "zzz"]) {
          await requests.write({ text, data: bytes(1100) });
          const reply = await replies.next();
          expect(!reply.done && reply.value.text === text, `${ctx}: bidi reply to ${text} before the next request`);
        }
        requests.close();
        expect((await replies.next()).done, `${ctx}: bidi ends after the requests end`);
      }

      // Timeouts: the server honours Connect-Timeout-Ms.
      try {
        await client.unary({ text: "slow", sleepMs: 2000 }, { timeoutMs: 100 });
        expect(false, `${ctx}: a slow call must time out`);
      } catch (e) {
        expect(ConnectError.from(e).code === Code.DeadlineExceeded, `${ctx}: deadline_exceeded, got ${e}`);
      }

      // Errors with details, unary and streaming.
      for (const call of [
        () => client.unary({ text: "boom", failCode: "not_found" }),
        async () => {
          for await (const _ of client.serverStream({ text: "boom", failCode: "not_found", count: 1 }));
        },
      ]) {
        try {
          await call();
          expect(false, `${ctx}: the call must fail`);
        } catch (e) {
          const err = ConnectError.from(e);
          expect(err.code === Code.NotFound, `${ctx}: not_found, got ${Code[err.code]}`);
          const details = err.findDetails(PayloadSchema);
          expect(details.length === 1 && details[0].text === "boom", `${ctx}: error detail decoded`);
        }
      }
    }
  }
}
console.log(`OK ${checks} checks`);
process.exit(0);
