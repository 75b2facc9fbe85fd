// A minimal RESP2 client for the local Redis: enough for the REST bridge to send commands
// (pipelined) and read binary-safe replies.

export type Reply = Uint8Array | number | null | RedisError | Simple | Reply[];

/** A `+OK`-style status reply, kept apart from bulk strings. */
export class Simple {
  constructor(readonly value: string) {}
}

/** A `-ERR …` reply: a value, not a thrown error, so one failed command in a pipeline stays in place. */
export class RedisError {
  constructor(readonly message: string) {}
}

const CRLF = new Uint8Array([13, 10]);
const enc = new TextEncoder();
const dec = new TextDecoder();

export class RespConnection {
  #buf: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #writer: WritableStreamDefaultWriter<Uint8Array>;

  private constructor(readonly conn: Deno.TcpConn) {
    this.#reader = conn.readable.getReader();
    this.#writer = conn.writable.getWriter();
  }

  static async connect(hostname: string, port: number): Promise<RespConnection> {
    return new RespConnection(await Deno.connect({ hostname, port }));
  }

  /** Sends every command in one write and reads one reply per command, in order. */
  async pipeline(commands: Uint8Array[][]): Promise<Reply[]> {
    const parts: Uint8Array[] = [];
    for (const args of commands) {
      parts.push(enc.encode(`*${args.length}\r\n`));
      for (const a of args) parts.push(enc.encode(`$${a.length}\r\n`), a, CRLF);
    }
    await this.#writer.write(concat(parts));
    const replies: Reply[] = [];
    for (let i = 0; i < commands.length; i++) replies.push(await this.#read());
    return replies;
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }

  async #fill(): Promise<void> {
    const { value, done } = await this.#reader.read();
    if (done || !value) throw new Error('redis connection closed');
    this.#buf = concat([this.#buf, value]);
  }

  async #line(): Promise<string> {
    for (;;) {
      const i = this.#buf.findIndex((b, j) => b === 13 && this.#buf[j + 1] === 10);
      if (i >= 0) {
        const line = dec.decode(this.#buf.subarray(0, i));
        this.#buf = this.#buf.subarray(i + 2);
        return line;
      }
      await this.#fill();
    }
  }

  async #bytes(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n + 2) await this.#fill();
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(n + 2);
    return out;
  }

  async #read(): Promise<Reply> {
    const line = await this.#line();
    const rest = line.slice(1);
    switch (line[0]) {
      case '+':
        return new Simple(rest);
      case '-':
        return new RedisError(rest);
      case ':':
        return Number(rest);
      case '$':
        return rest === '-1' ? null : await this.#bytes(Number(rest));
      case '*': {
        if (rest === '-1') return null;
        const items: Reply[] = [];
        for (let i = 0; i < Number(rest); i++) items.push(await this.#read());
        return items;
      }
      default:
        throw new Error(`unexpected RESP reply type ${JSON.stringify(line[0])}`);
    }
  }
}

function concat(parts: Uint8Array<ArrayBufferLike>[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
