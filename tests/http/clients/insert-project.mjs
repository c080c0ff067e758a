// An insert with a key: RLS checks the key's workspace and scope, and the
// trigger stamps created_by with the key's owner, whatever the client sends.
import { PostgrestClient } from '@supabase/postgrest-js'

const api = new PostgrestClient(process.env.PGRST_URL, {
  headers: { 'x-api-key': process.env.API_KEY },
})

const { data, error, status } = await api
  .from('projects')
  .insert({ workspace_id: process.env.WORKSPACE_ID, name: process.env.NAME, created_by: 'mallory' })
  .select() // the row back: Prefer: return=representation
console.log(JSON.stringify({ status, data, error }))
