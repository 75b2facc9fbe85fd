// The provider stand-in's structured answers (scripts/local/ai-standin/structured.ts): a value
// valid for each schema feature apps use, checked by the schema's own validator (zod, from which
// the JSON Schema is made as the AI SDK makes it), and the tool a tool choice makes it call.
import assert from 'node:assert/strict';
import { z } from 'zod';
import { toolToCall, valueFor } from '../../scripts/local/ai-standin/structured.ts';

const schemas: Record<string, z.ZodType> = {
  'strings, numbers, integers, booleans': z.object({ s: z.string(), n: z.number(), i: z.int(), b: z.boolean() }),
  'bounds': z.object({
    i: z.int().min(5).max(9),
    n: z.number().gt(2).lt(3),
    low: z.number().max(-4),
    s: z.string().min(20).max(30),
    a: z.array(z.string()).min(3),
  }),
  'enums, literals, nullable and optional': z.object({
    e: z.enum(['x', 'y']),
    l: z.literal('fixed'),
    nul: z.string().nullable(),
    opt: z.number().optional(),
    u: z.union([z.object({ k: z.literal('a') }), z.object({ k: z.literal('b'), v: z.int() })]),
  }),
  'nested objects and arrays': z.object({
    o: z.object({ p: z.array(z.object({ q: z.array(z.int()), r: z.object({ t: z.boolean() }) })) }),
  }),
  'a tuple': z.object({ t: z.tuple([z.string(), z.int()]) }),
};

for (const [name, schema] of Object.entries(schemas)) {
  Deno.test(`the stand-in answers a value valid for its schema: ${name}`, () => {
    const value = valueFor(z.toJSONSchema(schema));
    assert.deepEqual(schema.safeParse(value).error, undefined, JSON.stringify(value));
  });
}

Deno.test('the stand-in follows local $refs (a schema reused in two places; a recursive one ends)', () => {
  const Leaf = z.object({ name: z.string() });
  const reused = z.object({ a: Leaf, b: z.array(Leaf) });
  const json = z.toJSONSchema(reused, { reused: 'ref' });
  assert.match(JSON.stringify(json), /\$ref/);
  assert.equal(reused.safeParse(valueFor(json)).success, true);
  type Node = { label: string; children: Node[] };
  const Tree: z.ZodType<Node> = z.object({
    label: z.string(),
    get children() {
      return z.array(Tree);
    },
  });
  const tree = z.toJSONSchema(Tree);
  assert.match(JSON.stringify(tree), /\$ref/);
  assert.equal(Tree.safeParse(valueFor(tree)).success, true);
});

Deno.test('the tool called: none never; a named one; auto each once until a result comes back; required always', () => {
  const tools = [{ name: 'a', schema: {} }, { name: 'b', schema: {} }];
  assert.equal(toolToCall(tools, 'none', [], false), null);
  assert.equal(toolToCall([], 'required', [], false), null);
  assert.equal(toolToCall(tools, { name: 'b' }, ['b'], true)?.name, 'b');
  assert.equal(toolToCall(tools, 'auto', [], false)?.name, 'a');
  assert.equal(toolToCall(tools, 'auto', ['a'], false)?.name, 'b');
  assert.equal(toolToCall(tools, 'auto', ['a'], true), null);
  assert.equal(toolToCall(tools, 'auto', ['a', 'b'], false), null);
  assert.equal(toolToCall(tools, 'required', ['a'], true)?.name, 'b');
  assert.equal(toolToCall(tools, 'required', ['a', 'b'], true)?.name, 'a');
});
