import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FIRST_READ_BYTES, readRegularFile, readRegularFileSync } from './bounded-read';

describe('readRegularFile / readRegularFileSync', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-bounded-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(() => jest.restoreAllMocks());

  const file = (name: string, text: string): string => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const readBoth = async (
    p: string,
    maxBytes: number,
  ): Promise<[string | undefined, string | undefined]> => {
    const a = await readRegularFile(p, maxBytes);
    const s = readRegularFileSync(p, maxBytes);
    return ['text' in a ? a.text : a.error, 'bytes' in s ? s.bytes.toString('utf8') : s.error];
  };

  // Around the first buffer's length and the bound: the buffer grows without losing a byte,
  // a file of exactly the bound is read, one byte more is too large.
  it.each([
    0,
    1,
    FIRST_READ_BYTES - 1,
    FIRST_READ_BYTES,
    FIRST_READ_BYTES + 1,
    3 * FIRST_READ_BYTES + 7,
    65_536,
  ])('reads a file of %i bytes whole under a 64 KiB bound', async (size) => {
    const text = Array.from({ length: size }, (_, i) => String.fromCharCode(97 + (i % 26))).join(
      '',
    );
    const p = file(`f${size}`, text);
    expect(await readBoth(p, 65_536)).toEqual([text, text]);
  });

  it.each([65_537, 70_000])('a file of %i bytes is too large for a 64 KiB bound', async (size) => {
    const p = file(`big${size}`, 'x'.repeat(size));
    expect(await readBoth(p, 65_536)).toEqual(['too large', 'too large']);
  });

  it('a bound under the first buffer is kept to the byte', async () => {
    const p = file('pid', '12345\n');
    expect(await readBoth(p, 6)).toEqual(['12345\n', '12345\n']);
    expect(await readBoth(p, 5)).toEqual(['too large', 'too large']);
  });

  it('a small file is read without a buffer of the whole bound', async () => {
    // A zero-filled 64 KiB buffer a cgroup file, five of them a sample, kept the default
    // agent's RSS 5-12 MB above what readFile() had cost (bench:agent, 2026-12-06).
    const p = file('memory.stat', 'anon 200000000\ninactive_file 31564800\n');
    const alloc = jest.spyOn(Buffer, 'alloc');
    await readRegularFile(p, 64 * 1024);
    readRegularFileSync(p, 1024 * 1024);
    expect(alloc).toHaveBeenCalled();
    for (const [size] of alloc.mock.calls) expect(size).toBeLessThanOrEqual(FIRST_READ_BYTES);
  });
});
