/**
 * A new queue source is one file and one row in QUEUE_SOURCES (index.ts):
 * this test adds a source that exists only here, `{ source: 'fake', depth }`
 * with the row --fake-depth, to the list, and finds it in the option schema
 * and its errors, the CLI table, --help, and a sampling agent, with no other
 * file changed. The wire takes its name as it is (the protocol's
 * `queue.source` values are open tokens).
 */
import type * as Registry from './index';

jest.mock('./index', () => {
  // Inside the factory: it runs while the imports below load, before this file's constants exist.
  const actual = jest.requireActual<typeof Registry>('./index');
  const v = jest.requireActual<typeof import('valibot')>('valibot');
  const { int, strictObject } =
    jest.requireActual<typeof import('../option-errors')>('../option-errors');
  const fake: import('./source').AnyQueueSource = {
    name: 'fake',
    schema: strictObject({ source: v.literal('fake'), depth: int(0, 100) }),
    // A real source adds its members to QueueOptions and ResolvedQueueOptions (index.ts).
    resolve: (q: { source: 'fake'; depth: number }) => ({ ...q, resolved: true }) as never,
    create: (q: { depth: number }) => ({
      read: async () => ({ queue: { queued: q.depth, source: { queued: 'fake' } } }),
    }),
    cli: [
      {
        flag: 'fake-depth',
        option: 'queue.depth',
        implies: { 'queue.source': 'fake' },
        kind: 'int',
        arg: 'n',
        help: 'Queue source: a fixed queue depth (this test only)',
      },
    ],
  };
  return { ...actual, QUEUE_SOURCES: [...actual.QUEUE_SOURCES, fake] };
});

import { createAgent } from '../agent';
import { helpText } from '../cli';
import { CLI_OPTIONS, flagFor, mergeSources, toAgentOptions } from '../config';
import { resolveAgentOptions, type AgentOptions } from '../options';
import { QUEUE_SOURCES } from './index';

const fakeQueue = (queue: object): AgentOptions =>
  ({ backendId: 'b', queue: { source: 'fake', ...queue } }) as unknown as AgentOptions;

describe('a queue source registered by one row', () => {
  it('is a variant of the queue option, with its checks, defaults and errors', () => {
    expect(resolveAgentOptions(fakeQueue({ depth: 3 })).queue).toEqual({
      source: 'fake',
      depth: 3,
      resolved: true,
    });
    expect(() => resolveAgentOptions(fakeQueue({ depth: 101 }))).toThrow(
      'LW_AGENT_INVALID_OPTION: queue.depth: must be an integer from 0 to 100, got 101',
    );
    expect(() => resolveAgentOptions(fakeQueue({ dept: 1 }))).toThrow(
      'LW_AGENT_INVALID_OPTION: unknown option queue.dept (did you mean queue.depth?)',
    );
    expect(() =>
      resolveAgentOptions({ backendId: 'b', queue: { source: 'kafka' } as never }),
    ).toThrow('queue.source: must be tracker, kernel, prometheus or fake, got "kafka"');
  });

  it('brings its CLI rows: flag, environment variable, config key, --help, errors by flag', () => {
    const flags = CLI_OPTIONS.map((o) => o.flag);
    // After the sources before it, before the shared --source-timeout-ms.
    expect(flags.slice(flags.indexOf('tracker-url'), flags.indexOf('probe-url'))).toEqual([
      'tracker-url',
      'kernel-port',
      'prometheus-url',
      'prometheus-gauge',
      'prometheus-field',
      'prometheus-max-bytes',
      'fake-depth',
      'source-timeout-ms',
    ]);
    // The fake has no timeoutMs: the shared row does not count it.
    expect(CLI_OPTIONS.find((o) => o.flag === 'source-timeout-ms')?.needs).toEqual([
      'tracker-url',
      'prometheus-url',
    ]);
    const raw = mergeSources({ 'backend-id': 'b' }, { LOADWISE_FAKE_DEPTH: '4' });
    expect(toAgentOptions(raw, { requireBroker: false }).queue).toEqual({
      source: 'fake',
      depth: 4,
    });
    expect(() => toAgentOptions({ ...raw, kernelPort: 80 }, { requireBroker: false })).toThrow(
      '--fake-depth: choose one queue source (also given: --kernel-port)',
    );
    expect(flagFor('queue.depth', { fakeDepth: 101 })).toBe('--fake-depth');
    expect(helpText()).toMatch(
      /--fake-depth <n> +Queue source: a fixed queue depth \(this test only\)\n +env LOADWISE_FAKE_DEPTH, config key "fakeDepth", createAgent\(\) queue\.depth \+ queue\.source: 'fake'/,
    );
  });

  it('leaves no listed source without the one CLI row that picks it', () => {
    expect(QUEUE_SOURCES.map((s) => s.name)).toEqual(['tracker', 'kernel', 'prometheus', 'fake']);
    for (const s of QUEUE_SOURCES) {
      expect(CLI_OPTIONS.filter((o) => o.implies?.['queue.source'] === s.name)).toHaveLength(1);
    }
  });

  it('is what the agent samples, and goes on the wire under its name', async () => {
    const agent = createAgent({ ...fakeQueue({ depth: 5 }), cgroup: false });
    expect(await agent.sample()).toMatchObject({
      queue: { queued: 5, source: { queued: 'fake' } },
    });
    expect((await agent.sampleReport()).queue).toEqual({ queued: 5, source: { queued: 'fake' } });
    await agent.stop();
  });
});
