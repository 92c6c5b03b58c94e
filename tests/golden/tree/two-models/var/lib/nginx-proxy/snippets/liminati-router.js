// Managed by liminati: one API base URL for several models. Runs in nginx (njs) after the
// rate limit and the key check. Written for njs 0.7 and later (no async/await).

// the name a request puts in "model" -> the named location of the unit serving it
var BACKENDS = {"llama-8b": "@vllm_llama", "qwen": "@vllm_qwen"};
// every model's own /v1/models, merged for GET /v1/models
var LISTS = ["/_liminati_models/qwen", "/_liminati_models/llama"];

function fail(r, status, message, code) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({error: {
        message: message, type: 'invalid_request_error', param: 'model', code: code}}));
}

function served() {
    return Object.keys(BACKENDS).join(', ');
}

function route(r) {
    var body;
    var length = r.headersIn['Content-Length'];
    var sent = (length !== undefined && length !== '0') || r.headersIn['Transfer-Encoding'];
    if (r.requestText === undefined && sent) {
        // a body nginx wrote to a temporary file (over client_body_buffer_size)
        return fail(r, 413, 'the request body is too large to route', 'body_too_large');
    }
    try {
        body = JSON.parse(r.requestText || 'null');
    } catch (e) {
        return fail(r, 400, 'the request body is not JSON', 'invalid_json');
    }
    if (body === null || typeof body !== 'object' || typeof body.model !== 'string') {
        return fail(r, 400, 'the request has no "model"; served here: ' + served(),
                    'model_required');
    }
    if (!Object.prototype.hasOwnProperty.call(BACKENDS, body.model)) {
        return fail(r, 404, 'the model `' + body.model + '` is not served here; served: ' +
                    served(), 'model_not_found');
    }
    r.internalRedirect(BACKENDS[body.model]);
}

function models(r) {
    Promise.all(LISTS.map(function (uri) { return r.subrequest(uri); }))
        .then(function (replies) {
            var data = [];
            var down = [];
            replies.forEach(function (reply, i) {
                try {
                    if (reply.status !== 200) {
                        throw new Error('status ' + reply.status);
                    }
                    data = data.concat(JSON.parse(reply.responseText).data);
                } catch (e) {
                    down.push(LISTS[i]);
                }
            });
            if (down.length) {
                r.error('liminati: no model list from ' + down.join(', '));
            }
            r.headersOut['Content-Type'] = 'application/json';
            if (!data.length) {
                return r.return(502, JSON.stringify({error: {
                    message: 'no model is answering', type: 'server_error', code: 'no_backend'}}));
            }
            r.return(200, JSON.stringify({object: 'list', data: data}));
        })
        .catch(function (e) {
            r.error('liminati: ' + e);
            r.return(502);
        });
}

export default {route, models};
