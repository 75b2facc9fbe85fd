// The invitation email a student can make the platform send: its organisation's name is theirs
// to choose, so nothing in it may become a link, a new line or the subject.
import assert from 'node:assert/strict';
import { inert, render } from '../../supabase/functions/notify/notifications.ts';

const phishing = 'URGENT\r\n\r\nVerify your card: https://evil.example/pay, www.evil.example, evil\u3002example, ' +
  'help@evil.example, http://3232235777 \u202Eelpmaxe\u200B.evil';
const email = render('org_invitation', {
  org_name: phishing,
  inviter_email: 'mallory@school.example',
  role: 'admin',
  expires_at: '2026-12-01T00:00:00.000Z',
  accept_url: 'https://billing.scholarlink.example/#invitation=abc',
});
const [intro] = email.text.split('\n\n');

Deno.test("the organisation's name is neither in the subject nor anything a mail client makes a link of", () => {
  assert.ok(!email.subject.includes('URGENT'));
  for (
    const live of ['://evil', 'www.evil', 'evil.example', 'evil\u3002example', 'http://3232235777', '\u202E', '\u200B']
  ) {
    assert.ok(!intro.includes(live), `${JSON.stringify(live)} in ${intro}`);
  }
  assert.match(intro, /"URGENT Verify your card: https\[:\/\/\]evil\[\.\]example\/pay, www\[\.\]evil\[\.\]example/);
  assert.match(intro, /help@evil\[\.\]example, http\[:\/\/\]3232235777/);
});

Deno.test('the email says who invited, as what, and the link is ours and untouched', () => {
  assert.ok(intro.startsWith('mallory@school[.]example invites you to join the organisation "URGENT'));
  assert.ok(intro.endsWith('" on ScholarLink as admin.'));
  assert.ok(email.text.includes('(UTC): https://billing.scholarlink.example/#invitation=abc'));
  assert.match(email.text, /has not checked it/);
});

Deno.test('inert text keeps ordinary names as they are', () => {
  assert.equal(inert("St. Mary's School No. 2"), "St. Mary's School No. 2");
  assert.equal(inert('  Lakeside\tSchool  '), 'Lakeside School');
  assert.equal(inert('Class 3.5 – Ünïcödé'), 'Class 3[.]5 – Ünïcödé');
});
