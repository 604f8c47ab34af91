// The "app" behind the private proxy in the browser test: a TCP echo server that also
// answers a plain HTTP GET (so a browser or curl pointed at the public port sees a page).
// Usage: node echo_app.js PORT_FILE  -- binds 127.0.0.1:0 and writes its port to PORT_FILE.
'use strict';
const net = require('net');
const fs = require('fs');

const portFile = process.argv[2];
if (!portFile) {
  console.error('usage: node echo_app.js PORT_FILE');
  process.exit(2);
}

const BODY = 'hello from the app behind the tunnel\n';

const server = net.createServer((sock) => {
  let first = true;
  sock.on('data', (chunk) => {
    if (first) {
      first = false;
      if (chunk.length >= 4 && chunk.subarray(0, 4).toString('latin1') === 'GET ') {
        sock.end('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ' +
          Buffer.byteLength(BODY) + '\r\nConnection: close\r\n\r\n' + BODY);
        return;
      }
    }
    if (!sock.writableEnded) sock.write(chunk);
  });
  sock.on('end', () => { if (!sock.writableEnded) sock.end(); });
  sock.on('error', () => sock.destroy());
});

server.listen(0, '127.0.0.1', () => {
  const tmp = portFile + '.tmp';
  fs.writeFileSync(tmp, String(server.address().port) + '\n');
  fs.renameSync(tmp, portFile);
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
