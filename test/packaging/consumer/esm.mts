// An ES module consumer ("module": "node16", .mts): named imports from the
// CommonJS packages must resolve at compile time (types) and at run time
// (Node's CommonJS export detection over the compiled dist/).
import { loadBalance, STRATEGY_NAMES } from '@loadwise/gateway-plugin';
import { createAgent, DEFAULT_INTERVAL_MS } from '@loadwise/health-agent';
import { createEncoder, createDecoder, topicFor } from '@loadwise/protocol';

const encoded = createEncoder({ backendId: 'esm-1' }).status('online');
const decoded = createDecoder().decode(encoded.topic, encoded.payload);
const agent = createAgent({ backendId: 'esm-1' });
const lb = loadBalance({ backends: [{ id: 'esm-1', url: 'http://127.0.0.1:9' }] });
await lb.close();
process.stdout.write(
  `${JSON.stringify({
    decodedOk: decoded.ok,
    topic: topicFor('loadwise', 'esm-1', 'status'),
    strategies: STRATEGY_NAMES.length,
    agentState: agent.state,
    defaultIntervalMs: DEFAULT_INTERVAL_MS,
  })}\n`,
);
