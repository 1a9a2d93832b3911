/**
 * The soak's MQTT broker, alone in its process so the run can SIGKILL it and
 * start it again on the same port (a broker restart, as the gateway and the
 * agents see one): the embedded aedes broker of @loadwise/gateway-plugin.
 */
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';
import { fail, onShutdown, readConfig, tell } from '../procs/child';

async function main(): Promise<void> {
  const cfg = readConfig<{ port: number }>();
  const broker = await startEmbeddedBroker({ port: cfg.port });
  onShutdown(() => broker.close());
  tell({ type: 'ready', port: broker.port });
}

main().catch(fail);
