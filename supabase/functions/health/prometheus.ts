// Renders metrics in Prometheus' text exposition format.
import { bucketBounds } from '../_shared/http/latency.ts';
import { snapshot } from '../_shared/metrics.ts';

const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const labels = (l: Record<string, string>) =>
  Object.keys(l).length ? `{${Object.entries(l).map(([k, v]) => `${k}="${esc(v)}"`).join(',')}}` : '';

export class Exposition {
  #lines: string[] = [];
  #declared = new Set<string>();

  metric(
    name: string,
    type: 'counter' | 'gauge' | 'histogram',
    help: string,
    samples: Array<[Record<string, string>, number]>,
  ) {
    if (!this.#declared.has(name)) {
      this.#lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      this.#declared.add(name);
    }
    for (const [l, v] of samples) this.#lines.push(`${name}${labels(l)} ${Number.isFinite(v) ? v : 0}`);
    return this;
  }

  /** The request-latency histogram, per route, over the shared bucket bounds (_sum unknown → omitted). */
  histogram(name: string, help: string, byRoute: Record<string, number[]>) {
    const bounds = bucketBounds.filter(Number.isFinite); // the last bucket, everything slower, is +Inf
    return this.buckets(name, help, bounds, Object.entries(byRoute).map(([route, counts]) => [{ route }, counts]));
  }

  /**
   * A histogram per label set from per-bucket counts over `bounds` (bucket i counts values up to
   * bounds[i]; the one past the last, the rest), written cumulatively with `le`.
   */
  buckets(name: string, help: string, bounds: number[], series: Array<[Record<string, string>, number[]]>) {
    this.#lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    for (const [l, counts] of series) {
      let cumulative = 0;
      counts.forEach((n, i) => {
        cumulative += n;
        this.#lines.push(
          `${name}_bucket${labels({ ...l, le: i < bounds.length ? String(bounds[i]) : '+Inf' })} ${cumulative}`,
        );
      });
      this.#lines.push(`${name}_count${labels(l)} ${cumulative}`);
    }
    return this;
  }

  /** This instance's in-memory counters (per-instance, labelled as such). */
  counters() {
    for (const [key, value] of Object.entries(snapshot())) {
      const name = `scholarlink_${key.split('{')[0]}`;
      if (!this.#declared.has(name)) {
        this.#lines.push(`# HELP ${name} Counted by this instance since it started.`, `# TYPE ${name} counter`);
        this.#declared.add(name);
      }
      this.#lines.push(`scholarlink_${key} ${value}`);
    }
    return this;
  }

  toString() {
    return this.#lines.join('\n') + '\n';
  }
}
