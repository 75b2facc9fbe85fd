// Structured output and tools, as the stand-in plays them in every protocol: a JSON value valid for
// a JSON schema (objects, strings, numbers, integers, booleans, arrays, enums, const, anyOf/oneOf,
// nullable types, local $refs), and which tool a request's tool choice makes it call.

type Schema = Record<string, unknown>;
const isSchema = (x: unknown): x is Schema => !!x && typeof x === 'object' && !Array.isArray(x);

/** The schema a local `$ref` (`#/$defs/x`, `#/definitions/x`) points at in `root`. */
function resolve(ref: string, root: Schema): Schema {
  let at: unknown = root;
  for (const key of ref.replace(/^#\/?/, '').split('/').filter(Boolean)) at = isSchema(at) ? at[key] : undefined;
  return isSchema(at) ? at : {};
}

/** A number within the schema's bounds: `preferred` when it fits, else the lowest that does. */
function within(s: Schema, preferred: number, integer: boolean): number {
  const min = typeof s.minimum === 'number'
    ? s.minimum
    : typeof s.exclusiveMinimum === 'number'
    ? s.exclusiveMinimum + (integer ? 1 : 0.5)
    : -Infinity;
  const max = typeof s.maximum === 'number'
    ? s.maximum
    : typeof s.exclusiveMaximum === 'number'
    ? s.exclusiveMaximum - (integer ? 1 : 0.5)
    : Infinity;
  const v = Math.min(Math.max(preferred, min), max);
  return integer ? Math.ceil(v) : v;
}

/** Keywords a schema states in its description, as a model reads them (the AI SDK writes "minimum: 3; min items: 2." there for Anthropic's structured outputs, which refuse those keywords). */
const describedKeys: Record<string, string> = {
  'minimum': 'minimum',
  'maximum': 'maximum',
  'exclusive minimum': 'exclusiveMinimum',
  'exclusive maximum': 'exclusiveMaximum',
  'min items': 'minItems',
  'max items': 'maxItems',
  'min length': 'minLength',
  'max length': 'maxLength',
};
function described(schema: Schema): Schema {
  if (typeof schema.description !== 'string') return schema;
  const found: Schema = {};
  for (const [, name, value] of schema.description.matchAll(/([a-z ]+): (-?[0-9.]+)/g)) {
    const key = describedKeys[name.trim()];
    if (key && !(key in schema)) found[key] = Number(value);
  }
  return { ...found, ...schema };
}

/**
 * A value valid for `schema`: every property of an object (so every required one), the first of
 * an enum or of anyOf/oneOf (a non-null one when there is), `minItems` items of an array (one by
 * default, none below 8 levels), strings of numbered words as long as `minLength` asks.
 */
export function valueFor(given: unknown, root: Schema = isSchema(given) ? given : {}, depth = 0): unknown {
  if (!isSchema(given) || depth > 32) return null;
  const schema = described(given);
  if (typeof schema.$ref === 'string') return valueFor(resolve(schema.$ref, root), root, depth + 1);
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  const choices = (schema.anyOf ?? schema.oneOf) as unknown[] | undefined;
  if (Array.isArray(choices) && choices.length) {
    const nonNull = choices.find((c) => !(isSchema(c) && c.type === 'null'));
    return valueFor(nonNull ?? choices[0], root, depth + 1);
  }
  if (Array.isArray(schema.allOf) && schema.allOf.length) {
    return valueFor(Object.assign({}, ...schema.allOf.filter(isSchema)), root, depth + 1);
  }
  const types = Array.isArray(schema.type) ? schema.type : [schema.type];
  const type = types.find((t) => t !== 'null') ?? types[0] ?? (isSchema(schema.properties) ? 'object' : undefined);
  switch (type) {
    case 'object': {
      const properties = isSchema(schema.properties) ? schema.properties : {};
      return Object.fromEntries(Object.entries(properties).map(([k, s]) => [k, valueFor(s, root, depth + 1)]));
    }
    case 'array': {
      // One item unless asked for more, none deep down (so a recursive schema ends).
      const n = typeof schema.minItems === 'number'
        ? schema.minItems
        : Math.min(depth < 8 ? 1 : 0, typeof schema.maxItems === 'number' ? schema.maxItems : 1);
      const item = Array.isArray(schema.prefixItems) ? schema.prefixItems : [];
      return Array.from(
        { length: Math.max(n, item.length) },
        (_, i) => valueFor(item[i] ?? schema.items, root, depth + 1),
      );
    }
    case 'string': {
      const min = typeof schema.minLength === 'number' ? schema.minLength : 0;
      let s = 'word1';
      for (let i = 2; s.length < min; i++) s += ` word${i}`;
      return typeof schema.maxLength === 'number' ? s.slice(0, schema.maxLength) : s;
    }
    case 'integer':
      return within(schema, 1, true);
    case 'number':
      return within(schema, 1.5, false);
    case 'boolean':
      return true;
    case 'null':
      return null;
    default:
      return 'word1';
  }
}

/** A tool as every protocol offers it: its name and its parameters' schema. */
export type Tool = { name: string; schema: unknown };
/** A tool choice in every protocol's terms (Anthropic's `any` is `required`). */
export type ToolChoice = 'auto' | 'required' | 'none' | { name: string };

/**
 * The tool the stand-in calls, or null for an answer in text (or JSON): none when the choice is
 * `none`; the named tool; with `auto`, the first tool not called yet in the conversation, and none
 * once a tool's result is the last thing sent; with `required`, the first tool not called yet,
 * else the first. So a tool loop calls each tool once, then answers.
 */
export function toolToCall(tools: Tool[], choice: ToolChoice, called: string[], afterToolResult: boolean): Tool | null {
  if (!tools.length || choice === 'none') return null;
  if (typeof choice === 'object') return tools.find((t) => t.name === choice.name) ?? null;
  const fresh = tools.find((t) => !called.includes(t.name));
  if (choice === 'auto') return afterToolResult ? null : fresh ?? null;
  return fresh ?? tools[0];
}

/** The JSON arguments the stand-in calls `tool` with: a value valid for its parameters. */
export const argumentsFor = (tool: Tool) => JSON.stringify(valueFor(tool.schema) ?? {});
