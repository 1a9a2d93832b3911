import { createEncoder } from '@loadwise/protocol';
import { defaultClientId, mqttClientOptions } from './mqtt-publisher';

describe('mqttClientOptions', () => {
  const will = createEncoder({ backendId: 'b1', prefix: 'lw' }).status('offline', { will: true });

  it('never queues QoS 0 metrics while offline and sets a retained QoS 1 Last Will', () => {
    const o = mqttClientOptions({ url: 'mqtt://x' }, 'cid', will);
    expect(o).toMatchObject({
      clientId: 'cid',
      clean: true,
      queueQoSZero: false,
      reconnectPeriod: 1000,
      keepalive: 10,
    });
    expect(o.will).toMatchObject({ topic: 'lw/v1/backends/b1/status', qos: 1, retain: true });
    expect(JSON.parse(o.will!.payload.toString())).toMatchObject({
      kind: 'status',
      state: 'offline',
      will: true,
    });
  });

  it('passes TLS material and credentials through', () => {
    const o = mqttClientOptions(
      {
        url: 'mqtts://x',
        ca: 'CA',
        cert: 'CERT',
        key: 'KEY',
        username: 'u',
        password: 'p',
        rejectUnauthorized: false,
      },
      'cid',
      will,
    );
    expect(o).toMatchObject({
      ca: 'CA',
      cert: 'CERT',
      key: 'KEY',
      username: 'u',
      password: 'p',
      rejectUnauthorized: false,
    });
  });
});

describe('defaultClientId', () => {
  it('keeps its random part whatever the backend id: two agents never share one', () => {
    // Valid backend ids of 64 characters that differ only at the end.
    const base = 'payments-api-production-eu-west-1-availability-zone-a-instance-';
    const ids = [defaultClientId(`${base}1`), defaultClientId(`${base}2`), defaultClientId('b1')];
    for (const id of ids) {
      expect(id.length).toBeLessThanOrEqual(64);
      expect(id).toMatch(/^lw-agent-.+-[0-9a-f]{8}$/);
    }
    expect(new Set(ids).size).toBe(3);
    expect(ids[2]).toMatch(/^lw-agent-b1-[0-9a-f]{8}$/);
  });
});
