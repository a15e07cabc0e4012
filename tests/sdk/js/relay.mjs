// A unix socket relay between the SDK and boxd, which a test can cut (every connection through
// it dropped at once), freeze (bytes held, sockets left open) or point at another agent.
import * as net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

export class Relay {
  constructor(target) {
    this.target = target;
    this.pairs = new Set();
    this.accepted = 0;
    this.upBytes = 0; // client to agent
    this.downBytes = 0; // agent to client
    this.path = join(mkdtempSync(join(tmpdir(), "boxd-relay-")), "relay.sock");
    this.server = net.createServer((client) => {
      this.accepted++;
      const up = net.createConnection({ path: this.target });
      const pair = { client, up, frozen: false };
      this.pairs.add(pair);
      const drop = () => {
        client.destroy();
        up.destroy();
        this.pairs.delete(pair);
      };
      client.on("data", (d) => {
        if (pair.frozen) return;
        this.upBytes += d.length;
        up.write(d);
      });
      up.on("data", (d) => {
        if (pair.frozen) return;
        this.downBytes += d.length;
        client.write(d);
      });
      client.on("close", drop);
      up.on("close", drop);
      client.on("error", drop);
      up.on("error", drop);
    });
  }
  listen() {
    return new Promise((r) => this.server.listen(this.path, r));
  }
  /** Drops every connection through the relay, as a network failure would. */
  cut() {
    for (const p of [...this.pairs]) {
      p.client.destroy();
      p.up.destroy();
    }
    this.pairs.clear();
  }
  /** Cuts once `count()` has grown by `bytes` from now; resolves when it has cut. */
  cutAfter(count, bytes) {
    const mark = count();
    return new Promise((resolve) => {
      const t = setInterval(() => {
        if (count() - mark >= bytes) {
          clearInterval(t);
          this.cut();
          resolve();
        }
      }, 1);
    });
  }
  /** Stops forwarding on the current connections without closing them. */
  freeze() {
    for (const p of this.pairs) p.frozen = true;
  }
  close() {
    this.cut();
    this.server.close();
    rmSync(dirname(this.path), { recursive: true, force: true });
  }
}
