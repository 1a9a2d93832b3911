/**
 * `url` with its password shown as `***`. A broker URL may carry
 * `user:password@` (--broker, LOADWISE_BROKER, a config file), and so may a
 * --prometheus-url (basic auth for a protected /metrics), and the log goes
 * wherever stderr does (the journal, under examples/systemd's unit), read by
 * more people than the password file. The user name stays: it tells which
 * account is in use. A string the URL parser refuses is returned as it is
 * (options.ts refuses such a URL before anything connects), and so is a URL
 * without a password, unnormalised.
 */
export function withoutPassword(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return url;
  }
  if (parsed.password === '') return url;
  parsed.password = '***';
  return parsed.href;
}
