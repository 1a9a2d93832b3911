export {
  runWorkers,
  closeListener,
  type RunWorkersOptions,
  type WorkerContext,
  type WorkerPool,
  type ReloadResult,
  type CloseListenerOptions,
  type StartedWorker,
} from './run-workers';
export type { RestartOptions } from './restart-policy';
export { multiAccept, type MultiAcceptOptions } from './multi-accept';
