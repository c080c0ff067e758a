// The widget: its public key names a workspace only on the pages whose
// origin the key allows. The settings come from the page's address:
// widget.html?api=https://api.example.com&public_key=pk_…
const settings = new URLSearchParams(location.search)
const api = new postgrest.PostgrestClient(settings.get('api'))
const out = document.getElementById('workspace')

// GET /rpc/widget_workspace?public_key=pk_…, as anon: no secret, no JWT;
// the browser adds this page's Origin, which the database checks
api.rpc('widget_workspace', { public_key: settings.get('public_key') }, { get: true })
  .then(({ data, error }) => {
    if (error) {
      out.textContent = `error ${error.code}: ${error.message}`
      out.dataset.state = 'error'
    } else if (data.length === 0) {
      out.textContent = 'not available on this site'
      out.dataset.state = 'none'
    } else {
      out.textContent = data[0].workspace_id
      out.dataset.state = 'shown'
    }
  })
