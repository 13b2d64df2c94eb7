// uPlot (installed by npm into web/node_modules, served by the app under /ui/vendor/) is
// loaded by index.html as a classic script before the modules; this hands it to them.
const uPlot = globalThis.uPlot;
if (!uPlot) {
  throw new Error("the chart library (uPlot) did not load: run the set-up command " +
                  "(make serve, or npm ci --prefix web)");
}
export default uPlot;
