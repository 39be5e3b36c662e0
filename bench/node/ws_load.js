#!/usr/bin/env node
// WebSocket load client of the gateway benchmark. Prints one JSON object per line.
//
// echo: N sessions, each a closed loop (send, wait for the echo, send again).
//   node ws_load.js echo --url ws://127.0.0.1:19080/ws --sessions 64 --duration 10 --warmup 2 --size 128
//   -> {"event":"start"} when the measured window opens, {"event":"end"} when it closes,
//      then {"event":"result", msgs_per_s, p50_ms, p99_ms, ...}
//
// idle: open N sessions (one echo each to prove the path works end to end), report, then hold
// them until stdin closes or SIGTERM.
//   node ws_load.js idle --url ws://127.0.0.1:19080/ws --sessions 1000 --concurrency 100
//   -> {"event":"ready", opened, failed, seconds}
'use strict';

const WebSocket = require('ws');

const mode = process.argv[2];
function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const url = arg('url');
const sessions = Number(arg('sessions', '1'));
const binary = process.argv.includes('--binary');
const size = Number(arg('size', '128'));
const payload = binary ? Buffer.alloc(size, 0x61) : 'a'.repeat(size);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 30000 });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => reject(new Error(`handshake status ${res.statusCode}`)));
  });
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

async function echo() {
  const duration = Number(arg('duration', '10')) * 1000;
  const warmup = Number(arg('warmup', '1')) * 1000;
  const sockets = await Promise.all(Array.from({ length: sessions }, open));
  let recording = false;
  let running = true;
  let latencies = [];
  let errors = 0;
  let mismatches = 0;
  for (const ws of sockets) {
    let sentAt = 0;
    const send = () => { sentAt = nowMs(); ws.send(payload, { binary }); };
    ws.on('message', (data, isBinary) => {
      if (data.length !== size || isBinary !== binary) mismatches += 1;
      if (recording) latencies.push(nowMs() - sentAt);
      if (running) send();
    });
    ws.on('error', () => { errors += 1; });
    ws.on('close', () => { if (running) errors += 1; });
    send();
  }
  await new Promise((r) => setTimeout(r, warmup));
  latencies = [];
  recording = true;
  const started = nowMs();
  emit({ event: 'start' });
  await new Promise((r) => setTimeout(r, duration));
  recording = false;
  const seconds = (nowMs() - started) / 1000;
  emit({ event: 'end' });
  running = false;
  const count = latencies.length;
  const sorted = Float64Array.from(latencies).sort();
  emit({
    event: 'result', sessions, size, binary, messages: count, seconds,
    msgs_per_s: count / seconds,
    p50_ms: percentile(sorted, 50), p99_ms: percentile(sorted, 99),
    max_ms: count ? sorted[count - 1] : null, errors, mismatches,
  });
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

async function idle() {
  const concurrency = Number(arg('concurrency', '100'));
  const started = nowMs();
  const sockets = [];
  let failed = 0;
  let firstError = null;
  const one = async () => {
    const ws = await open();
    await new Promise((resolve, reject) => {
      ws.once('message', resolve);
      ws.once('close', () => reject(new Error('closed before echo')));
      ws.send(payload, { binary });
    });
    ws.on('error', () => {});
    sockets.push(ws);
  };
  let next = 0;
  const worker = async () => {
    while (next < sessions) {
      next += 1;
      try { await one(); } catch (e) { failed += 1; firstError = firstError || String(e); }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, sessions) }, worker));
  emit({ event: 'ready', opened: sockets.length, failed, first_error: firstError, seconds: (nowMs() - started) / 1000 });
  const stop = () => { for (const ws of sockets) ws.terminate(); process.exit(0); };
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

const modes = { echo, idle };
if (!modes[mode] || !url) {
  process.stderr.write('usage: ws_load.js echo|idle --url URL [--sessions N] ...\n');
  process.exit(2);
}
modes[mode]().catch((e) => { emit({ event: 'error', error: String(e) }); process.exit(1); });
