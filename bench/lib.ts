// What every benchmark here shares: printing its report while keeping the lines for the results
// file, and the few statistics the reports use.

/** A report printed as it is written and kept for bench/results/: `const { lines, say } = printer();` */
export function printer(): { lines: string[]; say: (s: string) => void } {
  const lines: string[] = [];
  return {
    lines,
    say: (s: string) => {
      console.log(s);
      lines.push(s);
    },
  };
}

/** The median of `xs` (the mean of the two middle values for an even count): `median([3, 1, 2]) === 2`. */
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** A number with thousands separators and `d` decimals: `fmt(12345.6, 1) === '12,345.6'`. */
export const fmt = (n: number, d = 0): string =>
  n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
