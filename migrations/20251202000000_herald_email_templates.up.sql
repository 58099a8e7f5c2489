-- Templates as data: every version of every template, per locale, immutable once stored (a new
-- version is a new row), so a queued email renders the version it was enqueued with.
CREATE TABLE email_templates (
    id                 uuid PRIMARY KEY DEFAULT uuid_generate_v7(),
    name               varchar(100) NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,99}$'),
    -- BCP 47, as given (en, de, de-AT, pt-BR).
    locale             varchar(35) NOT NULL CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$'),
    version            integer NOT NULL CHECK (version >= 1),
    subject            text NOT NULL,
    text_body          text NOT NULL,
    html_body          text NOT NULL,
    -- The data this version was checked against when it was stored.
    sample_data        jsonb NOT NULL CHECK (jsonb_typeof(sample_data) = 'object'),
    -- Variables data must hold (those the sources use, less the ones Herald provides).
    required_variables text[] NOT NULL DEFAULT '{}',
    created_by         varchar(100),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, locale, version)
);
CREATE TRIGGER update_email_templates_updated_at BEFORE UPDATE ON email_templates
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- The built-in templates, version 1 in English; editable like any other.
INSERT INTO email_templates
    (name, locale, version, subject, text_body, html_body, sample_data, required_variables, created_by)
VALUES
    ('welcome', 'en', 1, $tpl$Welcome, {{ name }}!$tpl$, $tpl$Hello {{ name }},

Welcome aboard. Your account is ready.

If you did not sign up, you can ignore this message.
$tpl$, $tpl$<p>Hello {{ name }},</p>
<p>Welcome aboard. Your account is ready.</p>
<p>If you did not sign up, you can ignore this message.</p>
$tpl$,
     '{"name": "Ada"}', ARRAY['name']::text[], 'migration'),
    ('notification', 'en', 1, $tpl${{ title }}$tpl$, $tpl${{ message }}
$tpl$, $tpl$<p>{{ message }}</p>
$tpl$,
     '{"title": "Your order shipped", "message": "It arrives on Tuesday."}', ARRAY['message', 'title']::text[], 'migration'),
    ('verification', 'en', 1, $tpl$Confirm your email address$tpl$, $tpl$Hello {{ name }},

Please confirm your email address by opening this link:

{{ link }}

The link works for 24 hours. If you did not create an account, ignore this message.
$tpl$, $tpl$<p>Hello {{ name }},</p>
<p>Please confirm your email address: <a href="{{ link|safe }}">confirm my address</a>.</p>
<p>Or paste this link into your browser: {{ link|safe }}</p>
<p>The link works for 24 hours. If you did not create an account, ignore this message.</p>
$tpl$,
     '{"name": "Ada", "link": "https://app.example.com/verify-email?token=sample"}', ARRAY['link', 'name']::text[], 'migration'),
    ('password_reset', 'en', 1, $tpl$Reset your password$tpl$, $tpl$Hello {{ name }},

Someone asked to reset the password of your account. To choose a new one, open this link:

{{ link }}

The link works for one hour and only once. If it was not you, ignore this message: your password stays as it is.
$tpl$, $tpl$<p>Hello {{ name }},</p>
<p>Someone asked to reset the password of your account. <a href="{{ link|safe }}">Choose a new password</a>.</p>
<p>Or paste this link into your browser: {{ link|safe }}</p>
<p>The link works for one hour and only once. If it was not you, ignore this message: your password stays as it is.</p>
$tpl$,
     '{"name": "Ada", "link": "https://app.example.com/reset-password?token=sample"}', ARRAY['link', 'name']::text[], 'migration');
