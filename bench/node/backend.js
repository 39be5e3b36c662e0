#!/usr/bin/env node
// Benchmark backend: WebSocket echo (any path, no permessage-deflate) and the
// streaming endpoints of the 1 GiB scenarios, on one loopback port.
//
//   POST /upload              reads the whole body, answers {"received": <bytes>}
//   GET  /download?bytes=N    streams N zero bytes with Content-Length (backpressure aware)
//   GET  /health              "ok"
//
// usage: node backend.js --port 18090 [--host 127.0.0.1]
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '18090'));
const CHUNK = Buffer.alloc(256 * 1024);

function upload(req, res) {
  let received = 0;
  req.on('data', (chunk) => { received += chunk.length; });
  req.on('end', () => {
    const body = JSON.stringify({ received });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  req.on('error', () => res.destroy());
}

function download(req, res, url) {
  const total = Number(url.searchParams.get('bytes') || 1024 * 1024 * 1024);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
  let left = total;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      const more = res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n));
      if (!more) { res.once('drain', pump); return; }
    }
    res.end();
  };
  res.on('close', () => { left = 0; });
  pump();
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://backend');
  if (req.method === 'POST' && url.pathname === '/upload') return upload(req, res);
  if (req.method === 'GET' && url.pathname === '/download') return download(req, res, url);
  if (url.pathname === '/health') { res.end('ok'); return; }
  res.writeHead(404); res.end('not found');
});
server.keepAliveTimeout = 120000;

const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => ws.terminate());
});

server.listen(port, host, () => process.stdout.write(`backend listening on ${host}:${port}\n`));
const stop = () => { for (const c of wss.clients) c.terminate(); server.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
