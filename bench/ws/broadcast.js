// The anchor for bench/ws_fanout.sh: a Node `ws` server that broadcasts every text message
// it receives to every connected client (sender included), like `kaprobe serve`'s
// /ws?room=NAME. Usage: node broadcast.js PORT (with `ws` installed next to it).
'use strict';
const { WebSocketServer, WebSocket } = require('ws');
const port = Number(process.argv[2] || 9001);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, backlog: 4096 });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) { ws.send(data, { binary: true }); return; }
    for (const c of wss.clients) {
      if (c.readyState === WebSocket.OPEN) c.send(data, { binary: false });
    }
  });
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`node ws: listening on ${port}`));
