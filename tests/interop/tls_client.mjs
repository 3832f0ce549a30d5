// connect-node client over TLS: trusts the CA in <caFile>, calls unary and server streaming.
// Usage: node tls_client.mjs <baseUrl> <caFile> <1.1|2>    (prints "OK" or exits 1)
import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InteropService } from "./gen/interop/v1/interop_pb.js";

const [baseUrl, caFile, httpVersion] = process.argv.slice(2);
const ca = readFileSync(caFile);
const transport = createConnectTransport({ baseUrl, httpVersion, nodeOptions: { ca } });
const client = createClient(InteropService, transport);
const echoed = await client.unary({ text: "over tls" });
if (echoed.text !== "over tls") {
  console.error(`FAILED: unary echo ${JSON.stringify(echoed)}`);
  process.exit(1);
}
let n = 0;
for await (const _ of client.serverStream({ text: "s", count: 2 })) n++;
if (n !== 2) {
  console.error(`FAILED: ${n} streamed messages`);
  process.exit(1);
}
console.log("OK");
process.exit(0);
