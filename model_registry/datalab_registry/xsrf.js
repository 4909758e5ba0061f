// Served by the registry gateway and loaded first by MLflow's pages: MLflow's UI
// sends no XSRF token, and the gateway accepts a cookie-authenticated API call
// only with one (JupyterHub's rule for its services: no same-origin exemption).
// Every fetch and XMLHttpRequest of the page gets the X-XSRFToken header, read
// from the gateway's _xsrf cookie at the time of the request.
(function () {
  function token() {
    var found = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    return found ? decodeURIComponent(found[1]) : "";
  }
  var fetch = window.fetch;
  window.fetch = function (input, init) {
    init = Object.assign({}, init);
    var headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
    if (!headers.has("X-XSRFToken")) headers.set("X-XSRFToken", token());
    init.headers = headers;
    return fetch.call(this, input, init);
  };
  var send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (body) {
    try { this.setRequestHeader("X-XSRFToken", token()); } catch (e) { /* not opened: send reports it */ }
    return send.call(this, body);
  };
})();
