// A rate-limited key: the refused request is a 429 whose error is the
// body. postgrest-js neither retries a 429 nor returns the response's
// headers; a fetch of your own reads Retry-After.
import { PostgrestClient } from '@supabase/postgrest-js'

const responses = []
const api = new PostgrestClient(process.env.PGRST_URL, {
  headers: { 'x-api-key': process.env.API_KEY },
  fetch: async (url, init) => {
    const res = await fetch(url, init)
    responses.push({ status: res.status, retryAfter: res.headers.get('retry-after') })
    return res
  },
})

const results = []
for (let i = 0; i < 3; i++) {
  results.push(await api.from('projects').select('name'))
}
console.log(JSON.stringify({ results, responses }))
