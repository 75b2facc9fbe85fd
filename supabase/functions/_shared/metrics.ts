// Per-instance counters, read by the metrics and health routes. Cheap enough for hot paths.

const counters = new Map<string, number>();

/**
 * Adds to a named counter; labels become part of the name in Prometheus style.
 * @example count('rate_limit_hits', { layer: 'ip' })
 */
export function count(name: string, labels: Record<string, string> = {}, by = 1): void {
  const escape = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
  const key = Object.keys(labels).length
    ? `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${escape(v)}"`).join(',')}}`
    : name;
  counters.set(key, (counters.get(key) ?? 0) + by);
}

/** A snapshot of every counter. */
export const snapshot = (): Record<string, number> => Object.fromEntries(counters);
