#!/usr/bin/env python3
"""Writes golden.tsv (input TAB phonemes) for the Rust G2P test from hibari-tts 0.2.1's Python G2P.

Run with the prototype venv (hibari on the path):
    PYTHONPATH=/tmp/tts-proto/hibari /tmp/tts-proto/venv/bin/python \
        src/speech/neural/g2p/testdata/make_golden.py

The inputs are already normalised (our normaliser runs before the G2P), so hibari's own normaliser
is skipped (normalize_text=False): the file pins the G2P proper, US English."""
import os

from hibari.g2p import G2P

SENTENCES = """
Hello, thank you for calling.
Hi there! How can I help you today?
Good morning, this is Anna from customer support.
Good afternoon, you're speaking with Siobhan.
Good evening, my name is Nguyen, how may I assist you?
Thanks for waiting, I appreciate your patience.
I'm sorry, I didn't catch that.
Could you please repeat that?
Sorry, could you say that again more slowly?
I'm transferring you to a colleague who is an expert in billing.
Please hold while I transfer your call.
I'll connect you with an agent now.
You'll be connected to the next available representative.
We can't find an account with that email address.
We've sent a verification code to your phone.
Your order has been shipped and should arrive on Tuesday.
Your order is out for delivery.
The package was delivered to your front door this morning.
I can see that your order is still being processed.
Would you like me to track your parcel?
Your refund has been approved and will appear on your statement within five business days.
To reset your password, click the link in the email we just sent you.
Please enter your new password twice.
Your password must contain at least eight characters.
I've reset your password, you can log in now.
Let me look that up for you.
One moment please.
Is there anything else I can help you with?
Thank you for calling, have a great day!
Our opening hours are Monday to Friday, nine a.m. to five p.m.
We're closed on Sundays and public holidays.
The store will close early on Christmas Eve.
Please close the door behind you.
Our office is close to the train station.
We're open from eight in the morning until eight in the evening.
Can I have your date of birth, please?
Could you please confirm your date of birth and the postcode on your account?
What's your account number?
Can you spell your last name for me?
Is that Anna with two n's?
I'd like to read you the terms and conditions.
I read your message yesterday.
Please read the instructions carefully.
The lead engineer will call you back.
Lead pipes were replaced in nineteen ninety.
Do you live in the United States?
The game is broadcast live on Saturday.
I'd like to record this call for training purposes.
This call may be recorded for quality purposes.
We have no record of that transaction.
I'd like to present our new offer.
Everyone was present at the meeting.
The present situation is unusual.
How do you use the app?
The use of this service is free.
I used to live in Boston.
We used the wrong address.
Can you confirm your address, please?
Our address is one hundred Main Street.
Would you like to upgrade your plan?
Your subscription will renew automatically next month.
I understand your frustration, and I apologize for the inconvenience.
We apologize for the delay.
I'm afraid that item is out of stock.
The item is back in stock.
It's a three-year warranty.
This is a well-known issue.
We offer twenty-four-hour support.
The follow-up email will arrive shortly.
Please check your spam folder.
Your ticket number is A, B, C, one, two, three.
Did you receive my email?
Yes, that's correct.
No, that's not right.
Okay, got it.
Great, I've updated your details.
Perfect, your appointment is confirmed for Thursday at two thirty.
Would you like to reschedule your appointment?
Your appointment has been cancelled.
The doctor will see you now.
Please bring your insurance card and a photo ID.
Do you have your booking reference?
Your flight has been delayed by two hours.
Your flight's departure gate has changed.
The customer's request has been escalated.
The customers' feedback is important to us.
Our team's goal is to resolve your issue today.
Sarah's order was shipped yesterday.
Please visit our website for more information.
You can also reach us by email.
I'll send you a text message with the details.
Press one for sales, two for support, or three for billing.
We accept Visa, Mastercard, and PayPal.
You can pay with Apple Pay or Google Pay.
Your Samsung Galaxy is covered by the warranty.
Have you tried restarting your iPhone?
Please unplug the router and plug it back in.
Is the light on your modem blinking?
Your Netflix subscription is managed through Vodafone.
We use Zendesk and Salesforce to track your requests.
The Kubernetes cluster is back online.
Our partner Zorblax will contact you.
Your Spotify account is linked to Hibari.
Have you installed the Xfinity app?
Please download the WhatsApp update.
Your Fitbit, AirPods and Chromecast are eligible.
Mr. Wojciechowski will call you back.
Can I speak to Mrs. Okonkwo?
Is Siobhan available?
Dear Anna, your order is ready.
Nguyen and Siobhan are on the team.
Thank you, Ms. Schmidt.
Can I get your first and last name?
Your name is Joaquin Phoenix, is that right?
My colleague Aoife will help you.
Please ask for Saoirse or Niamh.
I'm Chloe, your virtual assistant.
Are you still there?
Hello? Can you hear me?
I'm having trouble hearing you.
The line seems to be breaking up.
Let me transfer you to our technical team.
Our technicians are working on the outage.
We're experiencing higher than usual call volumes.
Your estimated wait time is five minutes.
Would you prefer a callback?
We'll call you back within the hour.
Do you want me to cancel the order?
I can't cancel an order that has already shipped.
You won't be charged for the return.
They're going to refund the full amount.
She's already been notified.
He'd like to speak to a manager.
We'd be happy to help.
Wouldn't it be easier to do it online?
Shouldn't you have received a confirmation?
You've been very helpful.
Let's get started.
It's been a pleasure speaking with you.
That'll be all for today.
The tracking number, the order number, and the invoice number are on your receipt.
You'll need your passport, your driver's license, and a utility bill.
Apples, oranges, bananas, and grapes are in stock.
Red, green, or blue?
Would you like the small, medium, or large size?
Do you want delivery or pickup?
Which day works best for you: Monday, Wednesday, or Friday?
The update is rolling out worldwide.
Please do not share your one-time passcode with anyone.
Your two-factor authentication is enabled.
We detected an unusual sign-in attempt.
Your card was declined.
Your card ending in four two one nine has expired.
The balance on your account is zero.
Your payment is overdue.
A late fee may apply.
An email has been sent.
I'm an AI assistant.
The USA and the UK have different plugs.
The FAQ page on our website answers most questions.
Please contact the IT department.
I'll put you through to HR.
Our CEO announced the merger on Monday.
Check the U.S. version of the site.
Your order 4471 was shipped.
Call us on extension 203.
It costs $12.50 plus tax.
The 3rd floor is closed.
In the 1990s we opened 25 stores.
Bob's and Alice's accounts were merged.
The café's menu changed.
Naïve users reuse passwords.
Is this the right e-mail address?
We're re-opening the ticket.
I've co-signed the form.
The check-in desk is on the left.
It's a long-term solution.
"Thank you," she said.
He said, "Please wait."
(This call is recorded.)
The offer — available today only — ends at midnight.
Wait... are you sure?
Hmm, let me think.
Uh-huh, I see.
Oh no, I'm sorry to hear that!
Wow, that's great news!
Absolutely!
Certainly, I can do that.
Unfortunately, we can't process your request.
By the way, your warranty expires soon.
Stand by, please.
What time do you close?
Where is my order?
Why was I charged twice?
When will my refund arrive?
Who am I speaking with?
How long will it take?
Have you tried turning it off and on again?
I am happy to help.
I am.
What are you calling about?
Please wait for the tone, then say your name.
Go to settings, then tap privacy.
The A-team is on it.
Plan A is cheaper than plan B.
The PDF is attached.
Scan the QR code on your screen.
Your PIN has been reset.
Enter the CVV on the back of your card.
The rebooted router's LEDs are green.
I'm reading the notes from your last call.
The reading on your meter was estimated.
The documents were read and signed.
We reviewed the lead times with our supplier.
The tear in the package was reported.
Please don't tear the seal.
I object to that charge.
That object is fragile.
We'll refuse the delivery.
The refuse collection is on Tuesday.
He wound the cable around the post.
The wind is strong today.
Does your content include video?
Are you content with the resolution?
The minute details matter.
It will take a minute.
Please separate the items.
They arrived in separate boxes.
Let's estimate the cost.
The estimate is ready.
"""


def main():
    g2p = G2P()
    here = os.path.dirname(os.path.abspath(__file__))
    lines = [s.strip() for s in SENTENCES.strip().splitlines() if s.strip()]
    with open(os.path.join(here, "golden.tsv"), "w", encoding="utf-8") as f:
        f.write("# input\tphonemes (hibari-tts 0.2.1 G2P, US, normalize_text=False); made by make_golden.py\n")
        for s in lines:
            assert "\t" not in s
            f.write(f"{s}\t{g2p(s, normalize_text=False)}\n")
    print(len(lines), "lines")


if __name__ == "__main__":
    main()
