// Talks only to switchyard, with the real supabase-js and the same code for every
// user: sign in (auth stays on v1), then insert, update, select, delete, rpc and
// functions.invoke. Prints one JSON line per user; exits non-zero on any error.
//   node e2e.mjs <switchyard url> <v1 anon key> '<json array of user ids>'
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const [url, anonKey, usersJson] = process.argv.slice(2);
const users = JSON.parse(usersJson);

function must(step, { data, error, status }) {
  if (error) {
    throw new Error(`${step}: ${status} ${JSON.stringify(error)}`);
  }
  return data;
}

for (const id of users) {
  const supabase = createClient(url, anonKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: ws },
  });
  must('sign in', await supabase.auth.signInWithPassword({ email: `${id}@example.com`, password: 'secret' }));
  const row = `${id}-row`;
  const inserted = must('insert', await supabase.from('profiles').insert({ id: row, owner: id, name: 'first' }).select());
  const updated = must('update', await supabase.from('profiles').update({ name: 'second' }).eq('id', row).select());
  const selected = must('select', await supabase.from('profiles').select('id,name').eq('id', row));
  must('insert scratch', await supabase.from('profiles').insert({ id: `${row}-scratch`, owner: id, name: 'gone' }));
  must('delete', await supabase.from('profiles').delete().eq('id', `${row}-scratch`));
  const rpc = must('rpc', await supabase.rpc('search_memories', { q: 'notes' }));
  const fn = must('functions.invoke', await supabase.functions.invoke('memory-create', { body: { title: 't' } }));
  console.log(JSON.stringify({
    id,
    inserted: inserted.length,
    updated: updated[0]?.name,
    selected: selected[0]?.name,
    rpc: { project: rpc.project, schema: rpc.schema, sub: rpc.sub },
    fn: { project: fn.project, function: fn.function, sub: fn.sub },
  }));
}
