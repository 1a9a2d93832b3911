export { startEmbeddedBroker, type EmbeddedBroker, type EmbeddedBrokerOptions } from './transport/embedded-broker';
