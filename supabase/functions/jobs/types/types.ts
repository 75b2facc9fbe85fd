// What a job type is: an input schema, an optional cost estimate (reserved as a hold when the
// job is created), and a handler that checkpoints as it goes.
import type { z } from 'zod';

export interface JobRow {
  id: string;
  user_id: string;
  type: string;
  input: unknown;
  resume_state: unknown;
  attempts: number;
}

export interface Checkpoint {
  progress: number;
  state: unknown;
  label?: string;
  /** A piece of the result to append (e.g. a CSV page), saved with the checkpoint. */
  chunk?: string;
}

export interface JobContext<I> {
  job: JobRow;
  input: I;
  /** The state saved by the last checkpoint of an earlier attempt, or null on a first run. */
  resumeState: unknown;
  /** Saves progress atomically and renews the lease; throws if the job was cancelled. */
  checkpoint(c: Checkpoint): Promise<void>;
}

export interface Usage {
  model: string;
  input_tokens: number;
  output_tokens: number;
}

export interface JobType<S extends z.ZodType = z.ZodType> {
  schema: S;
  /** Credits to reserve when the job is created; short → 402 and no job. */
  estimate?(input: z.infer<S>): Promise<string | null>;
  run(ctx: JobContext<z.infer<S>>): Promise<{ result: unknown; usage?: Usage }>;
}
