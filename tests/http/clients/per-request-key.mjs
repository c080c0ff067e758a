// A key for one request only: setHeader on the query builder. The client
// itself carries no key, and the next request goes without one.
import { PostgrestClient } from '@supabase/postgrest-js'

const api = new PostgrestClient(process.env.PGRST_URL)

const withKey = await api.from('projects').select('name').setHeader('x-api-key', process.env.API_KEY)
const withoutKey = await api.from('projects').select('name')
console.log(JSON.stringify({ withKey: withKey.data, withoutKey: withoutKey.data }))
