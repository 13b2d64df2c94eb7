// uPlot (shipped in web/vendor/uplot/, served by the app under /ui/vendor/) is loaded by
// index.html as a classic script before the modules; this hands it to them.
const uPlot = globalThis.uPlot;
if (!uPlot) {
  throw new Error("the chart library (uPlot) did not load from /ui/vendor/: " +
                  "reinstall gpuhistory (it ships the library)");
}
export default uPlot;
