// Reconnect and re-attach: connections cut mid-stream through a relay; the lines seen must
// equal a direct run's output exactly (none lost, none repeated).
import { test } from "node:test";
import assert from "node:assert/strict";
import { need, sdk } from "./lib.mjs";
import { Relay } from "./relay.mjs";

const { Box, BootChangedError, ConnectionLostError } = sdk;
const socket = need("BOXD_SOCKET");
const other = need("BOXD_SOCKET_OTHER");

// About 1.5 s of output, 400 numbered lines on stdout with some on stderr.
const CMD = "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"line $i of the run\"; " +
  "[ $((i % 50)) = 0 ] && echo \"err $i\" >&2; [ $((i % 10)) = 0 ] && sleep 0.03; done; echo done";

async function direct() {
  const box = await Box.connect({ socket });
  try {
    return await box.exec.command(CMD);
  } finally {
    box.close();
  }
}

function until(pred, ms = 20000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - t0 > ms) return reject(new Error("condition not met in time"));
      setTimeout(tick, 5);
    };
    tick();
  });
}

test("cutting the connection mid-run loses and repeats no line (callbacks, two cuts)", async () => {
  const want = await direct();
  assert.equal(want.status, "completed");
  const relay = new Relay(socket);
  await relay.listen();
  const box = await Box.connect({ socket: relay.path });
  let out = "";
  let err = "";
  try {
    const run = await box.exec.start(CMD, { onStdout: (d) => { out += d; }, onStderr: (d) => { err += d; } });
    await until(() => out.split("\n").length > 60);
    relay.cut();
    const mark = out.length;
    await until(() => out.length > mark && out.split("\n").length > 250);
    relay.cut();
    await run.wait();
    assert.equal(run.status, "completed");
    assert.ok(box.reconnects >= 2, `reconnects ${box.reconnects}`);
    assert.ok(relay.accepted >= 3, `relay accepted ${relay.accepted}`);
    assert.equal(out, want.stdout, "stdout seen through the cuts equals a direct run's");
    assert.equal(err, want.stderr);
    assert.equal(run.stdout, want.stdout);
    const lines = out.trimEnd().split("\n");
    assert.equal(lines.length, 401);
    assert.equal(new Set(lines).size, lines.length, "no line twice");
  } finally {
    box.close();
    relay.close();
  }
});

test("cutting the connection during exec.stream: the chunks equal a direct run's output", async () => {
  const want = await direct();
  const relay = new Relay(socket);
  await relay.listen();
  const box = await Box.connect({ socket: relay.path });
  try {
    let out = "";
    let seqs = [];
    let exit = null;
    let cut = false;
    for await (const item of box.exec.stream(CMD)) {
      if (item.type === "exit") {
        exit = item;
        break;
      }
      seqs.push(item.seq);
      if (item.stream === "stdout") out += item.data;
      if (!cut && seqs.length === 100) {
        relay.cut();
        cut = true;
      }
    }
    assert.ok(cut);
    assert.equal(exit.status, "completed");
    assert.equal(out, want.stdout);
    assert.deepEqual(seqs, seqs.map((_, i) => i), "every seq once, in order");
    assert.ok(box.reconnects >= 1);
  } finally {
    box.close();
    relay.close();
  }
});

test("a connection that goes silent is noticed by the heartbeat and replaced", async () => {
  const want = await direct();
  const relay = new Relay(socket);
  await relay.listen();
  const box = await Box.connect({ socket: relay.path, heartbeatMs: 200, requestTimeoutMs: 500 });
  let out = "";
  try {
    const run = await box.exec.start(CMD, { onStdout: (d) => { out += d; } });
    await until(() => out.split("\n").length > 40);
    relay.freeze();
    await run.wait({ timeoutMs: 20000 });
    assert.equal(out, want.stdout);
    assert.ok(box.reconnects >= 1);
  } finally {
    box.close();
    relay.close();
  }
});

test("a changed boot_id after a reconnect rejects the followed run with BootChangedError", async () => {
  const relay = new Relay(socket);
  await relay.listen();
  const box = await Box.connect({ socket: relay.path });
  try {
    const first = box.bootId;
    const run = await box.exec.start("sleep 3");
    relay.target = other; // the box "restarted": another agent answers
    relay.cut();
    await assert.rejects(run.wait(), (e) => {
      assert.ok(e instanceof BootChangedError);
      assert.equal(e.code, "boot_changed");
      assert.equal(e.oldBootId, first);
      assert.notEqual(e.newBootId, first);
      assert.match(e.message, /restarted/);
      return true;
    });
    assert.notEqual(box.bootId, first);
    const again = await box.exec.command("echo after");
    assert.equal(again.result, "after", "the box stays usable for new runs");
    await fetchCancel(run.id);
  } finally {
    box.close();
    relay.close();
  }
});

async function fetchCancel(id) {
  const b = await Box.connect({ socket });
  try {
    const r = await b.exec.attach(id);
    await r.cancel();
  } finally {
    b.close();
  }
}

test("when the agent stays unreachable, runs fail with ConnectionLostError after reconnectTimeoutMs", async () => {
  const relay = new Relay(socket);
  await relay.listen();
  const box = await Box.connect({ socket: relay.path, reconnectTimeoutMs: 400 });
  try {
    const run = await box.exec.start("sleep 5");
    relay.server.close(); // no new connections
    relay.cut();
    const t0 = Date.now();
    await assert.rejects(run.wait(), (e) => e instanceof ConnectionLostError && /reconnectTimeoutMs/.test(e.message));
    assert.ok(Date.now() - t0 < 5000);
    await fetchCancel(run.id);
  } finally {
    box.close();
    relay.close();
  }
});
