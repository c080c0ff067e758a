// One API key for every request of a client: postgrest-js sends the
// client's `headers` with each request.
import { PostgrestClient } from '@supabase/postgrest-js'

const api = new PostgrestClient(process.env.PGRST_URL, {
  headers: { 'x-api-key': process.env.API_KEY },
})

const { data, error, status } = await api.from('projects').select('name')
console.log(JSON.stringify({ status, data, error }))
