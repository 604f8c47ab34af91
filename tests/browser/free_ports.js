// Prints N distinct free TCP ports on 127.0.0.1, one a line: each is found by binding
// port 0, and all are held open together so that they differ, then released.
'use strict';
const net = require('net');

const n = Number(process.argv[2] || '1');
const servers = [];
let left = n;
for (let i = 0; i < n; i++) {
  const s = net.createServer();
  s.on('error', (e) => { console.error('free_ports: ' + e.message); process.exit(1); });
  s.listen(0, '127.0.0.1', () => {
    servers.push(s);
    if (--left === 0) {
      const ports = servers.map((x) => x.address().port);
      servers.forEach((x) => x.close());
      process.stdout.write(ports.join('\n') + '\n');
    }
  });
}
