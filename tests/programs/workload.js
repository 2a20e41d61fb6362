// The Node.js workload of tests/programs: V8's own heap is not malloc's, but everything around
// it is (buffers, zlib and crypto state, the worker threads' isolates, libuv's thread pool),
// and it is used from several threads at once. Prints what must not depend on the allocator.
'use strict';
const crypto = require('crypto');
const zlib = require('zlib');
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');

const kWorkers = 4;

// A worker: a map of small objects and strings, then buffers of many sizes.
function work(seed) {
  const map = new Map();
  for (let i = 0; i < 200000; i++) map.set('k' + ((i * 7 + seed) % 20000), { value: i, text: 'x'.repeat(i % 50) });
  let hash = 0;
  for (const [key, entry] of map) hash = (hash * 31 + key.length + entry.text.length) % 1000000007;
  const buffers = [];
  for (let i = 0; i < 2000; i++) buffers.push(Buffer.allocUnsafe(4096 + i).fill(i & 255));
  for (const buffer of buffers) hash = (hash * 31 + buffer[buffer.length - 1]) % 1000000007;
  return hash;
}

if (!isMainThread) {
  parentPort.postMessage(work(workerData));
} else {
  // zlib and pbkdf2 run on libuv's thread pool while the workers run.
  const pool = [];
  for (let i = 0; i < 48; i++) {
    pool.push(new Promise((resolve, reject) => {
      zlib.gzip(Buffer.alloc(100000 + i * 1000, i), (error, packed) => {
        if (error) return reject(error);
        zlib.gunzip(packed, (error2, unpacked) => (error2 ? reject(error2) : resolve(unpacked.length)));
      });
    }));
    pool.push(new Promise((resolve, reject) => {
      crypto.pbkdf2('password' + i, 'salt', 1000, 64, 'sha512', (error, key) => (error ? reject(error) : resolve(key[0])));
    }));
  }
  const workers = [];
  for (let w = 0; w < kWorkers; w++) {
    workers.push(new Promise((resolve, reject) => {
      const worker = new Worker(__filename, { workerData: w });
      worker.on('message', resolve);
      worker.on('error', reject);
    }));
  }
  Promise.all([Promise.all(workers), Promise.all(pool)]).then(([fromWorkers, fromPool]) => {
    console.log('workers', fromWorkers.join(' '));
    console.log('pool', fromPool.reduce((a, b) => a + b, 0));
  });
}
