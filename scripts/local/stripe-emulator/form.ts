// Decodes Stripe's form encoding (`metadata[k]=v`, `line_items[0][quantity]=1`) into
// nested objects and arrays, as Stripe's API does.

export type FormValue = string | FormObject | FormValue[];
export type FormObject = { [key: string]: FormValue };

export function parseForm(body: string): FormObject {
  const root: FormObject = {};
  for (const [rawKey, value] of new URLSearchParams(body)) {
    const keys = rawKey.split(/\[|\]\[|\]/).filter((k, i) => i === 0 || k !== '');
    let node: FormObject | FormValue[] = root;
    keys.forEach((key, i) => {
      const last = i === keys.length - 1;
      const slot = Array.isArray(node) ? Number(key) : key;
      const container = node as Record<string | number, FormValue>;
      if (last) {
        container[slot] = value;
      } else {
        container[slot] ??= /^\d+$/.test(keys[i + 1]) ? [] : {};
        node = container[slot] as FormObject | FormValue[];
      }
    });
  }
  return root;
}

/** A form value as a string, or null. */
export const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/** A form value as a nested object, or {}. */
export const obj = (v: unknown): FormObject => (v && typeof v === 'object' && !Array.isArray(v) ? v as FormObject : {});

/** The id of a reference that may hold an id or an object. */
export const idOf = (v: string | { id: string } | null) => (typeof v === 'string' ? v : v?.id ?? null);
