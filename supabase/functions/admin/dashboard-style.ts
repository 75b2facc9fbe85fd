// The dashboard's and sign-in page's stylesheet (the sections of their own modules add theirs).
// A table wider than its section scrolls inside its own box (.cards), never the page.
export const dashboardStyle = `
:root { font: 15px/1.45 system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem; }
h1 { font-size: 1.35rem; margin: .2rem 0 1rem; }
h2 { font-size: 1rem; margin: 0 0 .6rem; }
input, select, button { font: inherit; padding: .35rem .5rem; }
svg { width: 100%; height: auto; display: block; }
table { width: 100%; border-collapse: collapse; font-size: .88rem; }
td, th { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid #eef; }
[hidden] { display: none !important; }

.controls { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: 1rem; }
.controls label { display: flex; flex-direction: column; font-size: .8rem; color: #556; }

.tiles {
  display: grid;
  grid-template-columns: repeat(auto-fill, minmax(10.5rem, 1fr));
  gap: .7rem;
  margin-bottom: 1rem;
}
.tile {
  background: #fff;
  border-radius: .6rem;
  padding: .8rem 1rem;
  box-shadow: 0 1px 2px #0001;
  container-type: inline-size;
}
.tile .label { font-size: .8rem; color: #667; }
.tile .value { font-size: 1.45rem; font-weight: 650; white-space: nowrap; }
/* A long number is set smaller, and wraps rather than clips when even that is too wide. */
.tile .value.long { font-size: clamp(.95rem, 11cqi, 1.25rem); white-space: normal; overflow-wrap: anywhere; }
.headline { font-size: 1.3rem; font-weight: 650; margin: 0 0 .3rem; }
.headline .muted { font-size: .8rem; font-weight: 400; }

.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 21rem), 1fr)); gap: .7rem; }
section { background: #fff; border-radius: .6rem; padding: .9rem 1rem; box-shadow: 0 1px 2px #0001; min-width: 0; }
.wide { grid-column: 1 / -1; min-width: 0; }
.cards { overflow-x: auto; max-width: 100%; }
#orgs td { overflow-wrap: anywhere; }

.ok { color: #1b7a3a; }
.bad { color: #b3261e; }
.muted { color: #778; font-size: .85rem; }
.nowrap { white-space: nowrap; }
#error { background: #fde8e8; color: #8a1c1c; padding: .6rem 1rem; border-radius: .5rem; margin-bottom: 1rem; }

.legend span { display: inline-block; width: .7rem; height: .7rem; border-radius: 2px; margin: 0 .25rem 0 .6rem; }
.legend .b2c { background: #3558c9; }
.legend .b2b { background: #2bb08c; }
.chart .axis { font-size: .8rem; color: #556; margin: .2rem 0; }
.ticks { display: flex; justify-content: space-between; gap: .5rem; }

.narrow { max-width: 26rem; }
.narrow input { width: 100%; box-sizing: border-box; }
.draft-form { display: flex; flex-wrap: wrap; gap: .4rem; align-items: end; margin: .6rem 0; }
.draft-form input { width: 7.5rem; }
.draft-form label { display: flex; flex-direction: column; font-size: .8rem; color: #556; }
`;
