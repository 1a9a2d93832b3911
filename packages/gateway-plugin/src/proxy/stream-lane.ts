/**
 * The lane of long streamed answers (options.ts StreamOptions; docs/gateway.md,
 * "Streams"). A request holds a backend slot (saturation.maxInFlightPerBackend,
 * the pool's agent.maxSockets) and a place of its client (maxInFlightPerClient)
 * until its answer is whole. An event stream's answer never is: 256 open
 * streams, the default pool, left no slot for any other request to that
 * backend (503 LW_GW_SATURATED for all of them), and 65 from one NAT address
 * got every request of that address 429. A streamed answer (no length) still
 * running a while after its head is taken out of those bounds and held here,
 * under bounds of its own, as a WebSocket is (upgrade-flow.ts).
 *
 * Its backend connection stays one of the pool's (the pool's TLS options, its
 * loop guard, its destruction with the backend), with the pool's maxSockets
 * raised by one while it lasts, as upgradeLane in proxy-engine.ts does for
 * upgrades: the slot it left is free for a request again.
 */
import type { Agent } from 'node:http';
import { ClientLimit } from '../admission/client-limit';

/** A stream's place in the lane: what leave() gives back. */
export interface LanePlace {
  readonly client: string | undefined;
  readonly pool: Agent;
}

export class StreamLane {
  /** Streams in the lane now. */
  open = 0;
  private readonly perClient: ClientLimit | undefined;

  constructor(
    readonly afterMs: number,
    maxPerClient: number | undefined,
    private readonly maxOpen: number | undefined,
  ) {
    this.perClient = maxPerClient === undefined ? undefined : new ClientLimit(maxPerClient);
  }

  /**
   * A place for a stream of `client` on `pool`; undefined when the lane is full
   * in all or for that client: the stream then stays counted as a request.
   */
  enter(client: string | undefined, pool: Agent): LanePlace | undefined {
    if (this.maxOpen !== undefined && this.open >= this.maxOpen) return undefined;
    if (client !== undefined && this.perClient && !this.perClient.acquire(client)) return undefined;
    this.open++;
    pool.maxSockets += 1;
    return { client, pool };
  }

  leave(place: LanePlace): void {
    this.open--;
    place.pool.maxSockets -= 1;
    if (place.client !== undefined) this.perClient?.release(place.client);
  }
}
