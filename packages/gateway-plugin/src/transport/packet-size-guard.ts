/**
 * A byte stream that passes MQTT through unchanged but closes the connection
 * as soon as a packet's fixed header announces more than `maxPacketBytes`.
 *
 * Why: aedes 0.51 has no packet-size limit, and its parser (mqtt-packet)
 * appends every chunk to a buffer list until the whole packet has arrived:
 * one 100 MB PUBLISH costs 100 MB of the broker's memory, and with the
 * embedded broker that is the gateway's own process. The Remaining Length of
 * every packet is in its fixed header, a variable byte integer of at most
 * four bytes after the first byte (MQTT 3.1.1 §2.2.3), so the size is known before
 * the body: the guard never holds more than one chunk. A client that sends
 * an oversized packet is disconnected, as Mosquitto does with
 * `max_packet_size` (there is no way to skip a packet and stay in sync
 * without reading it).
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';

/**
 * Bytes a client may leave unread before it is disconnected: well above what
 * a gateway subscribing to a fleet's retained statuses and registrations gets
 * at once (under 2 MB at discovery.maxBackends 100, 8 KiB each).
 */
export const MAX_UNREAD_BYTES = 4 * 1024 * 1024;

/**
 * Bytes all of one broker's clients may leave unread together. Past it, a
 * client being written to that holds more than MAX_SHARE_OVER_BUDGET is
 * disconnected: 1,024 connections subscribed to one topic, none reading, would
 * otherwise hold 4 GiB of one 4 MiB flood.
 */
export const MAX_TOTAL_UNREAD_BYTES = 64 * 1024 * 1024;
export const MAX_SHARE_OVER_BUDGET = 64 * 1024;

/** What a broker's clients leave unread, together (one per broker, shared by its guards). */
export class UnreadBudget {
  bytes = 0;
}

/** How long a tripped connection may stay open for aedes to route what came before. */
export const TRIPPED_CLOSE_MS = 5_000;

/** Packet size = 1 (type byte) + bytes of the length field + Remaining Length. */
export class PacketSizeGuard extends Duplex {
  /** 0: expecting a type byte; 1..4: reading the length field; 5: inside a body. */
  private state = 0;
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;
  private bodyLeft = 0;
  /** Offset in the current chunk where the packet being read started (0 if in an earlier chunk). */
  private packetStart = 0;
  private tripped = false;
  /** Size of the oversized packet found by scan(), and where in the chunk it starts. */
  private oversized = 0;
  private oversizedAt = 0;

  /**
   * What aedes wrote while a write to the socket was still under way, copied
   * into one buffer and written as one when that write is done. aedes writes a
   * packet in several small pieces, and a socket queues each as an object of
   * its own (about 95 bytes of heap for a piece of 1 or 2 bytes): a client
   * that stopped reading held 178 MB of heap for 1.9 MB of unread bytes, under
   * the byte limit, and four such clients took the gateway's heap to 329 MB.
   */
  private backlog: Buffer | undefined;
  private backlogUsed = 0;
  /** A write to the socket is under way (its callback not yet called). */
  private writing = false;
  /** This client's share of `budget.bytes`, as last counted. */
  private counted = 0;

  constructor(
    private readonly socket: Socket,
    private readonly maxPacketBytes: number,
    private readonly onTooLarge: (packetBytes: number) => void,
    private readonly budget: UnreadBudget = new UnreadBudget(),
  ) {
    super({ allowHalfOpen: false });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.on('close', () => {
      this.backlog = undefined;
      this.backlogUsed = 0;
      this.count(0);
      this.destroy();
    });
  }

  /** Remote address, for whoever logs it (aedes reads `conn.remoteAddress`). */
  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }

  private onData(chunk: Buffer): void {
    if (this.tripped) return;
    if (this.scan(chunk)) {
      this.tripped = true;
      this.onTooLarge(this.oversized);
      // The whole packets before the oversized one are passed on, then the
      // stream ends: no byte of the oversized body is read. The socket is not
      // destroyed here: that would discard what aedes has not read yet (it
      // reads a batch only once the one before is handled), and a client's
      // retained reports published just before were lost. aedes reads to the
      // end, routes every whole packet, and closes the connection on 'end'.
      this.socket.pause();
      if (this.oversizedAt > 0) this.push(chunk.subarray(0, this.oversizedAt));
      this.push(null);
      // Should aedes not close it (a client that never connected), the socket
      // is closed anyway once aedes had ample time.
      const timer = setTimeout(() => this.socket.destroy(), TRIPPED_CLOSE_MS).unref();
      this.socket.once('close', () => clearTimeout(timer));
      return;
    }
    if (!this.push(chunk)) this.socket.pause();
  }

  /** Walks the packet boundaries in `chunk`; true when a packet is over the limit. */
  private scan(chunk: Buffer): boolean {
    let i = 0;
    this.packetStart = 0;
    while (i < chunk.length) {
      if (this.state === 5) {
        const step = Math.min(this.bodyLeft, chunk.length - i);
        this.bodyLeft -= step;
        i += step;
        if (this.bodyLeft === 0) this.state = 0;
        continue;
      }
      const byte = chunk[i++]!;
      if (this.state === 0) {
        this.packetStart = i - 1;
        this.state = 1;
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
        continue;
      }
      this.length += (byte & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      this.lengthBytes++;
      const size = 1 + this.lengthBytes + this.length;
      if (size > this.maxPacketBytes) {
        this.oversized = size;
        // Its header may have begun in an earlier chunk (already passed on, harmless: a
        // parser never acts on a partial packet); then nothing of this chunk goes through.
        this.oversizedAt = this.packetStart;
        return true;
      }
      if ((byte & 0x80) === 0) {
        this.bodyLeft = this.length;
        this.state = this.length === 0 ? 0 : 5;
      } else if (this.lengthBytes >= 4) {
        // A fifth length byte is malformed (MQTT 3.1.1 §2.2.3); the parser will reject the stream.
        this.state = 0;
      } else {
        this.state++;
      }
    }
    return false;
  }

  override _read(): void {
    // Tripped: the socket stays paused, the oversized body unread.
    if (!this.tripped) this.socket.resume();
  }

  override _write(
    chunk: Buffer,
    _encoding: BufferEncoding,
    cb: (err?: Error | null) => void,
  ): void {
    // Never wait for a client's 'drain': aedes delivers a message to its
    // subscribers with a bounded number of deliveries in flight, and one
    // subscriber that stopped reading held them all (about 80 publishes to a
    // topic it subscribed and no report reached the gateway any more: every
    // backend stale, drains unheard, discovery leases running out). Instead a
    // client that leaves more than MAX_UNREAD_BYTES unread is disconnected.
    this.send(chunk);
    cb();
  }

  private send(chunk: Buffer): void {
    const socket = this.socket;
    if (socket.destroyed) return;
    if (!this.writing) {
      this.writing = true;
      socket.write(chunk, this.written);
    } else {
      const used = this.backlogUsed + chunk.length;
      if (used + socket.writableLength > MAX_UNREAD_BYTES) return void socket.destroy();
      if (this.backlog === undefined || this.backlog.length < used) {
        const grown = Buffer.allocUnsafe(
          Math.min(MAX_UNREAD_BYTES, Math.max(used, 2 * (this.backlog?.length ?? 0), 4096)),
        );
        this.backlog?.copy(grown, 0, 0, this.backlogUsed);
        this.backlog = grown;
      }
      chunk.copy(this.backlog, this.backlogUsed);
      this.backlogUsed = used;
    }
    const unread = socket.writableLength + this.backlogUsed;
    if (unread > MAX_UNREAD_BYTES) return void socket.destroy();
    this.count(unread);
    if (this.budget.bytes > MAX_TOTAL_UNREAD_BYTES && unread > MAX_SHARE_OVER_BUDGET)
      socket.destroy();
  }

  /** The socket took the last write: what came meanwhile goes as one. */
  private readonly written = (): void => {
    this.writing = false;
    const socket = this.socket;
    if (this.backlogUsed === 0 || socket.destroyed) return this.count(socket.writableLength);
    const out = this.backlog!.subarray(0, this.backlogUsed);
    this.backlog = undefined;
    this.backlogUsed = 0;
    this.writing = true;
    socket.write(out, this.written);
    this.count(socket.writableLength);
  };

  /** Sets this client's share of the broker's unread bytes. */
  private count(unread: number): void {
    this.budget.bytes += unread - this.counted;
    this.counted = unread;
  }

  override _final(cb: (err?: Error | null) => void): void {
    // What is still held goes out before the end, after the write under way.
    if (this.backlogUsed > 0 && !this.socket.destroyed)
      this.socket.write(this.backlog!.subarray(0, this.backlogUsed));
    this.backlog = undefined;
    this.backlogUsed = 0;
    this.socket.end(() => cb());
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}
