/**
 * The checks behind resolveOptions (options-validate.ts): small pure
 * validators that either return the value (or its default) or throw a coded
 * GatewayError naming the option.
 */
import { BlockList, isIP } from 'node:net';
import { isValidBackendId } from '@loadwise/protocol';
import { GatewayError, invalidOption } from './errors';
import { defaultLogger } from './observability/event-log';
import type { BackendConfig, BrokerOption, Logger } from './options';

export const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const BROKER_PROTOCOLS = new Set(['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:']);

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function num(
  name: string,
  v: unknown,
  dflt: number,
  min: number,
  max = Infinity,
  int = false,
): number {
  if (v === undefined) return dflt;
  if (
    typeof v !== 'number' ||
    !Number.isFinite(v) ||
    v < min ||
    v > max ||
    (int && !Number.isInteger(v))
  ) {
    const range = max === Infinity ? `>= ${min}` : `in [${min}, ${max}]`;
    throw invalidOption(name, `${int ? 'an integer' : 'a number'} ${range}`, v);
  }
  return v;
}

export function bool(name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw invalidOption(name, 'a boolean', v);
  return v;
}

export function section(name: string, v: unknown): Record<string, unknown> {
  if (v === undefined || v === true || v === false) return {};
  if (!isObject(v)) throw invalidOption(name, 'an object', v);
  return v;
}

export function path(name: string, v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !v.startsWith('/') || /[?#\s]/.test(v)) {
    throw invalidOption(name, "a path starting with '/' without query or spaces", v);
  }
  return v;
}

export function backend(b: unknown, i: number): Required<BackendConfig> {
  if (!isObject(b)) throw invalidOption(`backends[${i}]`, 'an object { id, url }', b);
  if (!isValidBackendId(b.id)) {
    throw new GatewayError(
      'LW_GW_INVALID_BACKEND_ID',
      `backends[${i}].id ${JSON.stringify(b.id)} must be 1-64 characters of [A-Za-z0-9._:@-] starting with a letter or digit`,
    );
  }
  return {
    id: b.id,
    url: backendUrl(`backends[${i}].url`, b.url).href,
    weight: num(`backends[${i}].weight`, b.weight, 1, Number.MIN_VALUE, 1e6),
  };
}

/** Parses a backend URL; used for configured and for discovered backends. */
export function backendUrl(name: string, v: unknown): URL {
  let url: URL | undefined;
  try {
    url = typeof v === 'string' ? new URL(v) : undefined;
  } catch {
    url = undefined;
  }
  if (
    !url ||
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    url.username ||
    url.password ||
    url.search ||
    url.hash
  ) {
    throw new GatewayError(
      'LW_GW_INVALID_BACKEND_URL',
      `${name} ${JSON.stringify(v)}: expected http(s)://host[:port][/path]`,
    );
  }
  return url;
}

export function broker(v: unknown): BrokerOption | undefined {
  if (v === undefined) return undefined;
  const checkUrl = (u: unknown): void => {
    let ok = false;
    try {
      ok = typeof u === 'string' && BROKER_PROTOCOLS.has(new URL(u).protocol);
    } catch {
      ok = false;
    }
    if (!ok)
      throw new GatewayError(
        'LW_GW_INVALID_BROKER',
        `broker url ${JSON.stringify(u)}: expected mqtt://, mqtts://, ws:// or wss://`,
      );
  };
  if (typeof v === 'string') {
    checkUrl(v);
    return v;
  }
  if (!isObject(v)) throw new GatewayError('LW_GW_INVALID_BROKER');
  if ('client' in v) {
    const c = v.client as { subscribe?: unknown; on?: unknown } | undefined;
    if (!c || typeof c.subscribe !== 'function' || typeof c.on !== 'function') {
      throw new GatewayError('LW_GW_INVALID_BROKER', 'broker.client is not an mqtt.js client');
    }
    return v as BrokerOption;
  }
  if ('embedded' in v) {
    if (v.embedded !== true)
      throw new GatewayError('LW_GW_INVALID_BROKER', 'broker.embedded must be true');
    num('broker.port', v.port, 0, 0, 65535, true);
    if (v.host !== undefined && typeof v.host !== 'string')
      throw invalidOption('broker.host', 'a string', v.host);
    return v as BrokerOption;
  }
  checkUrl(v.url);
  num('broker.keepaliveSec', v.keepaliveSec, 30, 0, 65535, true);
  num('broker.reconnectPeriodMs', v.reconnectPeriodMs, 1000, 1);
  num('broker.connectTimeoutMs', v.connectTimeoutMs, 10000, 1);
  if (v.protocolVersion !== undefined && v.protocolVersion !== 4 && v.protocolVersion !== 5)
    throw invalidOption('broker.protocolVersion', '4 or 5', v.protocolVersion);
  if (
    v.clientIdPrefix !== undefined &&
    (typeof v.clientIdPrefix !== 'string' || v.clientIdPrefix.length > 40)
  ) {
    throw invalidOption(
      'broker.clientIdPrefix',
      'a string of at most 40 characters',
      v.clientIdPrefix,
    );
  }
  return v as unknown as BrokerOption;
}

export function parseCidr(range: unknown, list: BlockList): void {
  const [addr, bits, extra] = typeof range === 'string' ? range.split('/') : [];
  const family = addr ? isIP(addr) : 0;
  const prefix = Number(bits);
  const max = family === 6 ? 128 : 32;
  if (
    !family ||
    extra !== undefined ||
    bits === undefined ||
    !Number.isInteger(prefix) ||
    prefix < 0 ||
    prefix > max
  ) {
    throw new GatewayError(
      'LW_GW_INVALID_DISCOVERY',
      `allowed range ${JSON.stringify(range)} is not a CIDR (e.g. 10.0.0.0/8)`,
    );
  }
  list.addSubnet(addr as string, prefix, family === 6 ? 'ipv6' : 'ipv4');
}

export function logger(v: unknown): Logger {
  if (v === undefined) return defaultLogger();
  const l = v as Partial<Logger>;
  if (
    !isObject(v) ||
    typeof l.info !== 'function' ||
    typeof l.warn !== 'function' ||
    typeof l.error !== 'function'
  ) {
    throw invalidOption('logger', 'an object with info, warn and error functions', v);
  }
  return l as Logger;
}

export function fn<T>(name: string, v: unknown, dflt: T): T {
  if (v === undefined) return dflt;
  if (typeof v !== 'function') throw invalidOption(name, 'a function', v);
  return v as T;
}
