/**
 * The lane of long streamed answers (options.ts StreamOptions; docs/gateway.md,
 * "Streams"). A request holds a backend slot (saturation.maxInFlightPerBackend,
 * the pool's agent.maxSockets) and a place of its client (maxInFlightPerClient)
 * until its answer is whole. An event stream's answer never is: 256 open
 * streams, the default pool, left no slot for any other request to that
 * backend (503 LW_GW_SATURATED for all of them), and 65 from one NAT address
 * got every request of that address 429. An event stream (a streams.contentTypes
 * answer of no length) still running a while after its head is taken out of
 * those bounds and held here, under bounds of its own, as a WebSocket is
 * (upgrade-flow.ts).
 *
 * Its backend connection stays one of the pool's (the pool's TLS options, its
 * loop guard, its destruction with the backend), with the pool's maxSockets
 * raised by one while it lasts, as upgradeLane in proxy-engine.ts does for
 * upgrades: the slot it left is free for a request again.
 */
import type { Agent } from 'node:http';
import { ClientLimit } from '../admission/client-limit';

/** What the lane needs of a backend: its pool, and its count of streams in the lane. */
export interface LaneBackend {
  readonly agent: Agent;
  openStreams: number;
}

/** A stream's place in the lane: what leave() gives back. */
export interface LanePlace {
  readonly client: string | undefined;
  readonly backend: LaneBackend;
}

export class StreamLane {
  /** Streams in the lane now. */
  open = 0;
  private readonly perClient: ClientLimit | undefined;
  private readonly contentTypes: Set<string>;

  constructor(
    readonly afterMs: number,
    maxPerClient: number | undefined,
    private readonly maxOpen: number | undefined,
    contentTypes: readonly string[],
  ) {
    this.perClient = maxPerClient === undefined ? undefined : new ClientLimit(maxPerClient);
    this.contentTypes = new Set(contentTypes.map((t) => t.toLowerCase()));
  }

  /**
   * A place for a stream of `client` on `backend`; undefined when the lane is full
   * in all or for that client: the stream then stays counted as a request.
   */
  enter(client: string | undefined, backend: LaneBackend): LanePlace | undefined {
    if (this.maxOpen !== undefined && this.open >= this.maxOpen) return undefined;
    if (client !== undefined && this.perClient && !this.perClient.acquire(client)) return undefined;
    this.open++;
    backend.openStreams++;
    backend.agent.maxSockets += 1;
    return { client, backend };
  }

  leave(place: LanePlace): void {
    this.open--;
    place.backend.openStreams--;
    place.backend.agent.maxSockets -= 1;
    if (place.client !== undefined) this.perClient?.release(place.client);
  }

  /**
   * Whether an answer of this Content-Type may be a stream: its media type is one of
   * `streams.contentTypes` (`text/event-stream` by default). A chunked answer is not
   * enough: server-side rendering or an export writes chunks for seconds while the
   * backend works, and let out of the bounds after a second, twelve such answers ran
   * on a backend bounded to two (helper repro).
   */
  isStream(contentType: string | string[] | undefined): boolean {
    if (typeof contentType !== 'string') return false;
    const semi = contentType.indexOf(';');
    const type = (semi < 0 ? contentType : contentType.slice(0, semi)).trim().toLowerCase();
    return this.contentTypes.has(type);
  }
}
