/**
 * Typed events of a balancer (`lb.balancer.on('backend-ejected', ...)`).
 * Listeners run synchronously on the event loop: keep them cheap; a throwing
 * listener is caught and logged so it can never break routing.
 */
import { EventEmitter } from 'node:events';

export interface BalancerEvents {
  /** A backend became routable again (check passed, agent back online, verdict up). */
  'backend-up': [{ id: string }];
  /** A backend stopped being routable for a health reason (check failed, agent offline or verdict down). */
  'backend-down': [{ id: string; reason: string }];
  /** Passive outlier detection ejected a backend for `durationMs`. */
  'backend-ejected': [{ id: string; durationMs: number; consecutiveFailures: number }];
  /** An ejection expired; the backend ramps up again (slow start). */
  'backend-restored': [{ id: string }];
  /** The agent reported `draining`: no new requests, in-flight ones finish. */
  'backend-draining': [{ id: string }];
  /** A signed registration inside the allowed ranges added a backend (discovery). */
  'backend-added': [{ id: string; url: string }];
  /**
   * A discovered backend was taken out: `silent` (its agent sent nothing signed for
   * discovery.forgetAfterMs), `evicted` (it had left: its agent stopped it, or its agent
   * is lost and it fails its checks; maxBackends needed its slot), `moved` (another
   * agent run registered the id at another address: `backend-added` follows with it) or
   * `configured-server` (a configured backend's name resolves to its address now).
   */
  'backend-removed': [
    {
      id: string;
      url: string;
      silentMs: number;
      reason: 'silent' | 'evicted' | 'moved' | 'configured-server';
    },
  ];
  /** The last report of a backend became older than its freshness limit. */
  'metrics-stale': [
    {
      id: string;
      ageMs: number | undefined;
      /** Logged with the others that went stale in the same sweep, as one line. */
      quiet?: boolean;
    },
  ];
  /** Every eligible backend is saturated (requests queue), or no longer. */
  saturation: [{ saturated: boolean; queued: number }];
  /** The gateway's event loop is too slow: it sheds new requests, or stopped shedding. */
  overload: [{ overloaded: boolean; eventLoopDelayMs: number }];
  /**
   * Connections wait in the listen socket's accept queue (`depth` of `limit`, the
   * effective backlog): the gateway sheds new requests, or stopped shedding.
   */
  'accept-queue': [{ shedding: boolean; depth: number; limit: number }];
  /** Too few healthy backends: traffic spreads over every routable one (Envoy panic). */
  panic: [{ panic: boolean; healthy: number; routable: number }];
  'broker-connected': [{ url: string | undefined }];
  'broker-lost': [{ error: string | undefined }];
  /** A connection attempt failed while not connected (once per outage; the URL and the error). */
  'broker-unreachable': [{ url: string | undefined; error: string }];
  /** A wire message was dropped (protocol error code, or LW_GW_UNKNOWN_BACKEND style reasons). */
  'invalid-message': [
    {
      code: string;
      backendId: string | undefined;
      detail?: string;
      /** Already logged by the balancer itself (one warning for a whole class of drops). */
      quiet?: boolean;
    },
  ];
}

export class BalancerEmitter extends EventEmitter<BalancerEvents> {
  private muted = false;

  constructor(private readonly onListenerError: (err: unknown) => void) {
    super();
  }

  /** After close(): nothing the closing cuts short (an ejection, a lost broker) is reported. */
  mute(): void {
    this.muted = true;
  }

  override emit<K extends keyof BalancerEvents>(event: K, ...args: BalancerEvents[K]): boolean {
    if (this.muted) return false;
    try {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      return super.emit(event as any, ...(args as any));
    } catch (err) {
      this.onListenerError(err);
      return true;
    }
  }
}
