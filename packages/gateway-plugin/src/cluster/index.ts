export {
  runWorkers,
  type RunWorkersOptions,
  type WorkerContext,
  type WorkerPool,
  type StartedWorker,
} from './run-workers';
export type { RestartOptions } from './restart-policy';
