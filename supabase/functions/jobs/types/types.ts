// What a job type is: an input schema, an optional cost estimate (reserved as a hold when the
// job is created), and a handler that checkpoints as it goes and may run in slices.
import type { z } from 'zod';

export interface JobRow {
  id: string;
  user_id: string;
  type: string;
  input: unknown;
  resume_state: unknown;
  attempts: number;
  /** An AI job queued under a consent to keep its content (re-read when it completes). */
  keep_content: boolean;
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
  /** The state saved by the last checkpoint (an earlier slice or attempt), or null on a first run. */
  resumeState: unknown;
  /** Saves progress atomically and renews the lease; throws if the job was cancelled. */
  checkpoint(c: Checkpoint): Promise<void>;
}

/** What a metered job used, by kind (disjoint, as POST /credits/usage takes them; docs/pricing.md). */
export interface Usage {
  model: string;
  input_tokens: number;
  output_tokens: number;
  cached_input_tokens?: number;
  reasoning_tokens?: number;
  images?: number;
  audio_seconds?: number;
}

/** A handler that finished: the job completes with this result (and usage, if metered). */
export interface Done {
  result: unknown;
  usage?: Usage;
  /** An AI job's call for ai_logs: content (redacted) only when the job may keep it (billing.keep_job_log). */
  log?: { duration_ms: number; content?: { prompt: string; answer: string } };
}

/**
 * A slice that saved its progress with `checkpoint` and has more to do: the worker hands the job
 * back and the next tick runs the next slice from the saved state (edge requests are short).
 */
export interface More {
  more: true;
}

export interface JobType<S extends z.ZodType = z.ZodType> {
  schema: S;
  /** Credits to reserve when `userId` creates the job; short → 402 and no job (a refusal thrown: no job either). */
  estimate?(input: z.infer<S>, userId: string): Promise<string | null>;
  /** Runs the job, or one slice of it (then `resumeState` holds what the last slice saved). */
  run(ctx: JobContext<z.infer<S>>): Promise<Done | More>;
}
