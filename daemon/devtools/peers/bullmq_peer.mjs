// The PEER scenario's BullMQ side (schedd.devtools.peer_bench): a worker or a producer.
//
//   node bullmq_peer.mjs worker   REDIS_URL QUEUE CONCURRENCY
//   node bullmq_peer.mjs producer REDIS_URL QUEUE SERIAL WARMUP BURST TIMEOUT
//
// The bench copies this file next to the node_modules it installs bullmq into and runs it
// there. The contract is the one of schedd.devtools.peer_drivers:
// * worker: a Worker of CONCURRENCY with a no-op processor (returns null); prints "ready" once
//   connected, then runs until killed.
// * producer: WARMUP + SERIAL jobs one after the other (queue.add, then its completion), one
//   JSON line {"serial_s": [...]}; then, after a line on stdin, BURST jobs in one
//   queue.addBulk and every completion awaited (TIMEOUT seconds at most; a serial job's too,
//   whose lateness ends the producer with an error), one JSON line with
//   the seconds from addBulk called to the last completion and the jobs submitted, received,
//   lost, duplicated and failed.
// * Completions, serial and burst alike, are QueueEvents' "completed" and "failed" events (the
//   events stream read by the producer), keyed by job id; an event that arrives before
//   queue.add has returned the id is kept until it does. The events stream is made long enough
//   for a whole burst (streams.events.maxLen), so that a slow reader loses none of its events.
// * Every job is added with removeOnComplete and removeOnFail set to true (BullMQ keeps
//   nothing of a finished job: its cheapest setting, and the one its guide gives for
//   throughput).
import readline from 'node:readline';
import { performance } from 'node:perf_hooks';
import { Queue, QueueEvents, Worker } from 'bullmq';

const [role, redisUrl, queueName, ...rest] = process.argv.slice(2);
const url = new URL(redisUrl);
const connection = { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null };
const JOB_OPTS = { removeOnComplete: true, removeOnFail: true };
const DATA = { n: 1 };

function emit(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

async function worker(concurrency) {
  const w = new Worker(queueName, async () => null, { connection, concurrency });
  await w.waitUntilReady();
  emit('ready');
}

async function producer(serial, warmup, burst, timeoutS) {
  const queue = new Queue(queueName, {
    connection, streams: { events: { maxLen: Math.max(10000, burst * 10) } },
  });
  // From the stream's start, not '$': the bench flushes Redis before each turn, and a reader at
  // '$' misses the events written before its first XREAD (a first job done that fast was lost).
  const events = new QueueEvents(queueName, { connection, lastEventId: '0-0' });
  await queue.waitUntilReady();
  await events.waitUntilReady();

  const waiting = new Map(); // job id -> resolve(ok)
  const early = new Map(); // job id -> ok, for completions seen before add returned
  let onFinished = null; // the burst's counter while it runs
  const finish = (jobId, ok) => {
    if (onFinished !== null) {
      onFinished(jobId, ok);
      return;
    }
    const resolve = waiting.get(jobId);
    if (resolve !== undefined) {
      waiting.delete(jobId);
      resolve(ok);
    } else {
      early.set(jobId, ok);
    }
  };
  events.on('completed', ({ jobId }) => finish(jobId, true));
  events.on('failed', ({ jobId }) => finish(jobId, false));
  const finished = (jobId) => {
    if (early.has(jobId)) {
      const ok = early.get(jobId);
      early.delete(jobId);
      return Promise.resolve(ok);
    }
    return new Promise((resolve) => waiting.set(jobId, resolve));
  };

  const seconds = [];
  for (let index = 0; index < warmup + serial; index++) {
    const started = performance.now();
    const job = await queue.add('noop', DATA, JOB_OPTS);
    let serialTimer;
    const late = new Promise((resolve) => { serialTimer = setTimeout(() => resolve(null), timeoutS * 1000); });
    const ok = await Promise.race([finished(job.id), late]);
    clearTimeout(serialTimer);
    if (ok === null) throw new Error(`job ${job.id}: no completion within ${timeoutS} s`);
    if (!ok) throw new Error(`job ${job.id} failed`);
    if (index >= warmup) seconds.push((performance.now() - started) / 1000);
  }
  emit({ serial_s: seconds });

  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  await lines.next();
  const received = [];
  const distinct = new Set();
  let failed = 0;
  let allDone;
  const all = new Promise((resolve) => { allDone = resolve; });
  onFinished = (jobId, ok) => {
    received.push(jobId);
    distinct.add(jobId);
    if (!ok) failed++;
    if (distinct.size >= burst) allDone();
  };
  const started = performance.now();
  const jobs = await queue.addBulk(
    Array.from({ length: burst }, () => ({ name: 'noop', data: DATA, opts: JOB_OPTS })));
  let timer;
  await Promise.race([all, new Promise((resolve) => { timer = setTimeout(resolve, timeoutS * 1000); })]);
  clearTimeout(timer);
  const elapsed = (performance.now() - started) / 1000;
  const wanted = new Set(jobs.map((job) => job.id));
  const counts = new Map();
  for (const id of received) counts.set(id, (counts.get(id) ?? 0) + 1);
  let duplicated = 0;
  for (const [id, n] of counts) duplicated += (n - 1) + (wanted.has(id) ? 0 : 1);
  let lost = 0;
  for (const id of wanted) if (!counts.has(id)) lost++;
  emit({
    seconds: Math.round(elapsed * 1e6) / 1e6, submitted: jobs.length, received: received.length,
    lost, duplicated, failed,
  });
  await events.close();
  await queue.close();
  process.exit(0);
}

if (role === 'worker') {
  await worker(Number(rest[0]));
} else if (role === 'producer') {
  const [serial, warmup, burst, timeoutS] = rest.map(Number);
  await producer(serial, warmup, burst, timeoutS);
} else {
  process.stderr.write(`unknown role ${role}: worker or producer\n`);
  process.exit(2);
}
