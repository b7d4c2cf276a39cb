// A wasi:http component in JavaScript, as componentize-js builds any of
// them: the runtime turns the standard `fetch` event into
// `wasi:http/incoming-handler`.
//
//   GET  <prefix>/hello   a greeting
//   POST <prefix>/echo    the body back
//
// Build: componentize-js --wit ../wit --world-name proxy -o hello.wasm app.js

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const path = new URL(request.url).pathname;
  if (path.endsWith("/hello")) {
    return new Response("hello from javascript", { headers: { "content-type": "text/plain" } });
  }
  if (path.endsWith("/echo") && request.method === "POST") {
    return new Response(await request.arrayBuffer(), { headers: { "content-type": "application/octet-stream" } });
  }
  return new Response("no such route", { status: 404 });
}
