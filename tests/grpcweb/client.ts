// A real gRPC-web client for the gateway tests: Connect's gRPC-web transport (binary format) over
// Node's fetch, with the messages and service descriptors generated from protos/ into web/gen.
//
// Bundled by esbuild into one .mjs (Node 20 cannot run TypeScript). Usage: `node client.mjs`, with the
// command as the first line of stdin (requests can be larger than a command line may be):
//   {"baseUrl": "http://127.0.0.1:8080", "token": "<jwt>" | null, "service": "metermesh.ingest.v1.IngestService",
//    "method": "GetMeter", "request": {<proto3 JSON>}, "timeoutMs": 5000?, "headers": {...}?}
// It prints JSON lines: {"message": {...}} per response message, then {"ok": true, "trailer": {...}} or
// {"error": {"code": <gRPC code number>, "message": "...", "details": [{"type": "...", "value": "<base64>"}]}}.
// A later line "cancel" on stdin aborts the call (the client going away); it then prints {"cancelled": true}.
import { fromJson, toJson, type DescService, type JsonValue } from "@bufbuild/protobuf";
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AlertService } from "../../web/gen/metermesh/alerts/v1/alerts_pb";
import { AnomalyService } from "../../web/gen/metermesh/anomaly/v1/anomaly_pb";
import { BillingService } from "../../web/gen/metermesh/billing/v1/billing_pb";
import { ForecastService } from "../../web/gen/metermesh/forecast/v1/forecast_pb";
import { IngestService } from "../../web/gen/metermesh/ingest/v1/ingest_pb";

interface Command {
  baseUrl: string;
  token?: string | null;
  service: string;
  method: string;
  request?: JsonValue;
  timeoutMs?: number;
  headers?: Record<string, string>;
}

const SERVICES: DescService[] = [IngestService, AnomalyService, ForecastService, BillingService, AlertService];

function emit(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function errorLine(err: unknown): unknown {
  const e = ConnectError.from(err);
  return {
    error: {
      code: e.code,
      message: e.rawMessage,
      details: e.details.map((d) =>
        "type" in d ? { type: d.type, value: Buffer.from(d.value).toString("base64") } : { type: d.desc.typeName },
      ),
    },
  };
}

async function main(): Promise<void> {
  // stdin: the command, then possibly "cancel".
  const abort = new AbortController();
  let cancelled = false;
  let buffered = "";
  let resolveCommand!: (line: string) => void;
  const firstLine = new Promise<string>((resolve) => (resolveCommand = resolve));
  let gotCommand = false;
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk: string) => {
    buffered += chunk;
    let nl: number;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (!gotCommand) {
        gotCommand = true;
        resolveCommand(line);
      } else if (line === "cancel") {
        cancelled = true;
        abort.abort();
      }
    }
  });
  const cmd = JSON.parse(await firstLine) as Command;
  const service = SERVICES.find((s) => s.typeName === cmd.service);
  if (!service) throw new Error(`unknown service ${cmd.service}`);
  const method = service.methods.find((m) => m.name === cmd.method);
  if (!method) throw new Error(`unknown method ${cmd.service}/${cmd.method}`);

  const transport = createGrpcWebTransport({ baseUrl: cmd.baseUrl, useBinaryFormat: true });
  const client = createClient(service, transport) as Client<DescService> & Record<string, Function>;
  const headers: Record<string, string> = { ...(cmd.headers ?? {}) };
  if (cmd.token) headers["authorization"] = `Bearer ${cmd.token}`;
  const options = { headers, signal: abort.signal, timeoutMs: cmd.timeoutMs };
  const request = fromJson(method.input, cmd.request ?? {});
  const fn = client[method.localName] as Function;
  try {
    if (method.methodKind === "unary") {
      const trailer: Record<string, string> = {};
      const response = await fn(request, {
        ...options,
        onTrailer: (t: Headers) => t.forEach((v, k) => (trailer[k] = v)),
      });
      emit({ message: toJson(method.output, response) });
      emit({ ok: true, trailer });
    } else if (method.methodKind === "server_streaming") {
      for await (const response of fn(request, options) as AsyncIterable<never>) {
        emit({ message: toJson(method.output, response) });
      }
      emit({ ok: true });
    } else {
      throw new Error(`${method.methodKind} calls cannot go over gRPC-web`);
    }
  } catch (err) {
    emit(cancelled ? { cancelled: true } : errorLine(err));
  }
  process.stdin.destroy();
}

main().catch((err) => {
  process.stderr.write(String(err?.stack ?? err) + "\n");
  process.exitCode = 1;
});
